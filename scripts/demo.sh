#!/usr/bin/env bash
# make demo: the main job end to end on a real ext4 image built from files on this machine.
#   1. build a 512 MiB ext4 image from real files (mke2fs -t ext4 -d)
#   2. init an encrypted repository (the passphrase in a 0600 file), snapshot the image; change
#      it in place like a running system would (debugfs -w); snapshot again
#   3. show how little the second snapshot stored
#   4. restore both snapshots and prove every used block and every file identical (verify,
#      debugfs rdump + diff) and the filesystems clean (e2fsck -fn)
set -euo pipefail
cd "$(dirname "$0")/.."
DV=".venv/bin/diskvault"
W=demo-work
rm -rf "$W"; mkdir -p "$W/content"
export PATH="$PATH:/usr/sbin:/sbin"

echo "== 1. a real ext4 image from files on this machine"
.venv/bin/python scripts/copy_real_files.py "$W/content" 200
truncate -s 512M "$W/disk.img"
mke2fs -q -F -t ext4 -d "$W/content" "$W/disk.img"
echo "   $W/disk.img: 512 MiB ext4 image, $(du -h "$W/disk.img" | cut -f1) allocated"

echo "== 2. init (encrypted), snapshot, change in place (debugfs -w), snapshot again"
(umask 077; head -c 24 /dev/urandom | base64 > "$W/passphrase")
export DISKVAULT_PASSWORD_FILE="$PWD/$W/passphrase"   # keep a copy elsewhere: without it nothing restores
$DV init -r "$W/repo"
$DV snapshot -r "$W/repo" "$W/disk.img" --tag demo --no-progress
cp --sparse=always "$W/disk.img" "$W/expected-1.img"
head -c 3M /dev/urandom > "$W/new-file.bin"
for i in $(seq 2000); do echo "changed configuration line $i"; done > "$W/app.conf"
files=$(cd "$W/content" && find . -type f -size +8k | sort | sed 's|^\./||')
victim1=$(echo "$files" | sed -n 10p)
victim2=$(echo "$files" | sed -n 200p)
rewrite=$(echo "$files" | sed -n 400p)
{
  echo "write $W/new-file.bin new-file.bin"          # a new file
  echo "mkdir etc-changes"
  echo "write $W/app.conf etc-changes/app.conf"
  echo "rm $victim1"                          # deleted files
  echo "rm $victim2"
  echo "rm $rewrite"                          # a rewritten file
  echo "write $W/app.conf $rewrite"
} | debugfs -w -f - "$W/disk.img" >/dev/null 2>&1
e2fsck -fn "$W/disk.img" >/dev/null 2>&1
cp --sparse=always "$W/disk.img" "$W/expected-2.img"
$DV snapshot -r "$W/repo" "$W/disk.img" --tag demo --no-progress --json > "$W/second.json"

echo "== 3. what the second snapshot cost"
.venv/bin/python - "$W/second.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"   second snapshot {s['id'][:12]}: {s['size'] >> 20} MiB image, {s['data_bytes'] / 2**20:.0f} MiB of data read")
print(f"   {s['new_chunks']} new chunks of {s['chunks']}: {s['new_bytes'] / 2**20:.2f} MiB new data,"
      f" {s['stored_bytes'] / 2**20:.2f} MiB stored in {s['duration']:.2f} s")
PY
$DV snapshots -r "$W/repo"
$DV info -r "$W/repo" | grep -E "^(snapshots|logical bytes|unique bytes|stored bytes|dedup ratio|total ratio)"

echo "== 4. restore both and prove them identical: every used block (verify), every file (debugfs rdump + diff), e2fsck clean"
# free blocks are not stored (the deleted files' old bytes are not part of the filesystem):
# a restore holds zeros there, so the proof is every used block and every file, not cmp
n=1
for id in $($DV snapshots -r "$W/repo" --json | .venv/bin/python -c "import json,sys; print(' '.join(s['id'] for s in json.load(sys.stdin)))"); do
  $DV restore -r "$W/repo" "$id" "$W/restored-$n.img" --no-progress
  $DV verify -r "$W/repo" "$id" "$W/expected-$n.img" --json > "$W/verify-$n.json"   # exit 9 if a kept byte differed
  e2fsck -fn "$W/restored-$n.img" >/dev/null 2>&1
  rm -rf "$W/files-a" "$W/files-b"; mkdir "$W/files-a" "$W/files-b"
  debugfs -R "rdump / $W/files-a" "$W/restored-$n.img" >/dev/null 2>&1
  debugfs -R "rdump / $W/files-b" "$W/expected-$n.img" >/dev/null 2>&1
  diff -r "$W/files-a" "$W/files-b" >/dev/null
  skipped=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1])).get('skipped_bytes', 0) >> 20)" "$W/verify-$n.json")
  echo "   snapshot ${id:0:12}: every used block and every file identical to the image it was taken from ($skipped MiB of free blocks not stored), e2fsck clean, $(du -h "$W/restored-$n.img" | cut -f1) allocated (sparse)"
  n=$((n + 1))
done
rm -rf "$W/files-a" "$W/files-b"
echo "== 5. encrypted: a wrong passphrase is refused, and no file of the repository shows the image's text"
if env -u DISKVAULT_PASSWORD_FILE DISKVAULT_PASSWORD=wrong $DV snapshots -r "$W/repo" 2>/dev/null; then
  echo "a wrong passphrase opened the repository" >&2; exit 1
fi
grep -q "changed configuration line 1999" "$W/disk.img"
if grep -rqa "changed configuration line" "$W/repo"; then
  echo "plaintext of the image found in the repository" >&2; exit 1
fi
echo "   wrong passphrase: exit 10; 'changed configuration line …' (in the image) is in no repository file"
rm -f "$W"/expected-*.img "$W"/restored-*.img   # 2 GB of images; the repository and disk.img stay to explore
echo "demo OK (to explore: the repository $W/repo, its passphrase $W/passphrase, the image $W/disk.img; make clean removes them)"
