#!/bin/sh
# diskvault rescue system: the console menu (busybox sh), one per console (screen, serial).
# Lists disks (size, model, partition table, file systems; BitLocker and hibernated NTFS
# explained), finds diskvault repositories on them, restores a snapshot onto a disk (after a
# loud confirmation) and verifies it, snapshots a disk into a repository, or opens a shell.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
MNT=/mnt/menu

human() {  # bytes -> "476.94 GiB"
  awk -v n="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1
    while (n >= 1024 && i < 5) { n /= 1024; i++ }
    if (i == 1) printf "%d B", n; else printf "%.2f %s", n, u[i] }'
}

disks() {  # whole disks, one name a line
  for d in /sys/block/*; do
    n=${d##*/}
    case "$n" in loop*|ram*|sr*|zram*|dm-*|md*) continue;; esac
    [ "$(cat "$d/size")" -gt 0 ] && echo "$n"
  done
}

model() {
  m=$(cat "/sys/block/$1/device/model" 2>/dev/null | sed 's/ *$//')
  v=$(cat "/sys/block/$1/device/vendor" 2>/dev/null | sed 's/ *$//')
  case "$v" in 0x1af4) echo "virtio disk (no model)"; return;; esac
  echo "${v:+$v }${m:-unknown model}"
}

disk_size() { echo $(( $(cat "/sys/block/$1/size") * 512 )); }

part_note() {  # partition device, fs type -> a line explaining Windows specifics, or nothing
  if [ "$(dd if="$1" bs=1 skip=3 count=8 2>/dev/null)" = "-FVE-FS-" ]; then
    echo "BitLocker-encrypted volume: imaged whole (encrypted, no used-block map); after a restore Windows asks for the recovery key if the TPM no longer matches"
    return
  fi
  if [ "$2" = ntfs ]; then
    # the other console's menu may be probing the same volume, which a read-write probe opens
    # exclusively: the loser exits 16 or 18 (measured: 6 probes at once, 4 exited 18); ask again
    for try in 1 2 3 4 5; do
      ntfs-3g.probe --readwrite "$1" >/dev/null 2>&1
      rc=$?
      case $rc in 16|18) sleep 1;; *) break;; esac
    done
    case $rc in
      14) echo "NTFS left hibernated (Windows Fast Startup or hibernation): an image is consistent but Windows resumes from it; to change files, boot Windows and shut down with Shift+Shutdown, or turn Fast Startup off";;
      15) echo "NTFS not cleanly unmounted: run chkdsk from Windows before trusting a snapshot";;
    esac
  fi
}

show_disks() {
  echo "Disks:"
  for d in $(disks); do
    pt=$(blkid -o value -s PTTYPE "/dev/$d" 2>/dev/null)
    t=; l=
    [ -z "$pt" ] && t=$(blkid -o value -s TYPE "/dev/$d" 2>/dev/null) && l=$(blkid -o value -s LABEL "/dev/$d" 2>/dev/null)
    echo "  /dev/$d  $(human "$(disk_size "$d")")  $(model "$d")  table: ${pt:-none}${t:+  $t (whole disk)}${l:+  label $l}"
    [ -n "$t" ] && note=$(part_note "/dev/$d" "$t") && [ -n "$note" ] && echo "        ! $note"
    for p in /sys/block/"$d"/"$d"*; do
      [ -e "$p/partition" ] || continue
      n=${p##*/}
      t=$(blkid -o value -s TYPE "/dev/$n" 2>/dev/null)
      l=$(blkid -o value -s LABEL "/dev/$n" 2>/dev/null)
      echo "      /dev/$n  $(human $(( $(cat "$p/size") * 512 )))  ${t:-no file system}${l:+  label $l}"
      note=$(part_note "/dev/$n" "$t")
      [ -n "$note" ] && echo "        ! $note"
    done
  done
}

mount_dev() {  # DEVICE DIR MODE: any file system the rescue system reads
  mkdir -p "$2"
  case "$(blkid -o value -s TYPE "$1" 2>/dev/null)" in
    ntfs) ntfs-3g -o "$3" "$1" "$2" 2>/dev/null;;
    ext2|ext3|ext4|vfat|exfat|xfs|btrfs) mount -t "$(blkid -o value -s TYPE "$1")" -o "$3" "$1" "$2" 2>/dev/null;;
    *) return 1;;
  esac
}

find_repos() {  # writes "DEVICE PATH" lines to /tmp/repos; hinted devices (LABEL=/UUID=) first
  : > /tmp/repos
  devs=""
  for h in $REPO_HINTS; do d=$(findfs "$h" 2>/dev/null) && devs="$devs $d"; done
  for p in /sys/class/block/*; do [ -e "$p/partition" ] && devs="$devs /dev/${p##*/}"; done
  for d in $(disks); do devs="$devs /dev/$d"; done
  seen=" "
  for dev in $devs; do
    case "$seen" in *" $dev "*) continue;; esac
    seen="$seen$dev "
    dir=$MNT/${dev##*/}
    mount_dev "$dev" "$dir" ro || { rmdir "$dir" 2>/dev/null; continue; }
    for c in "$dir" "$dir"/* "$dir"/*/*; do
      [ -f "$c/config.json" ] && [ -d "$c/snapshots" ] && echo "$dev ${c#$dir}" >> /tmp/repos
    done
    umount "$dir"; rmdir "$dir"
  done
}

unlock_repo() {  # DIR NAME: an encrypted repository's passphrase, asked once and kept in RAM (tmpfs)
  grep -q '"encryption": "aes-256-gcm"' "$1/config.json" 2>/dev/null || return 0
  [ -s "${DISKVAULT_PASSWORD_FILE:-/nonexistent}" ] && return 0
  printf "Passphrase of the repository %s: " "$2"; stty -echo 2>/dev/null; read -r pw; stty echo 2>/dev/null; echo
  (umask 077; printf '%s' "$pw" > /tmp/diskvault-password); pw=
  export DISKVAULT_PASSWORD_FILE=/tmp/diskvault-password
}

forget_passphrase() {  # after exit 10 (a wrong passphrase): ask again next time
  [ "$1" = 10 ] || return 0
  rm -f /tmp/diskvault-password; unset DISKVAULT_PASSWORD_FILE
}

pick_repo() {  # sets REPODEV and REPOPATH; returns 1 when there is none or the user backs out
  find_repos
  if [ ! -s /tmp/repos ]; then echo "No diskvault repository found on the attached disks."; return 1; fi
  echo "Repositories:"
  awk '{ printf "  %d) %s:%s\n", NR, $1, ($2 == "" ? "/" : $2) }' /tmp/repos
  printf "Repository number: "; read -r n
  line=$(sed -n "${n}p" /tmp/repos 2>/dev/null)
  [ -n "$line" ] || return 1
  REPODEV=${line%% *}; REPOPATH=${line#* }
}

confirm_disk() {  # DEVICE WHAT -> 0 only when the user types the disk's name
  d=${1#/dev/}
  echo
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!!  EVERYTHING ON /dev/$d WILL BE OVERWRITTEN ($2)"
  echo "!!  /dev/$d: $(human "$(disk_size "$d")"), $(model "$d")"
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  printf "Type %s to continue, anything else to go back: " "$d"; read -r a
  [ "$a" = "$d" ]
}

do_restore() {
  pick_repo || return
  mount_dev "$REPODEV" "$MNT/repo" ro || { echo "cannot mount $REPODEV"; return; }
  repo=$MNT/repo$REPOPATH
  unlock_repo "$repo" "$REPODEV:$REPOPATH"
  diskvault snapshots -r "$repo" || { forget_passphrase $?; umount "$MNT/repo"; return; }
  printf "Snapshot to restore (id, or latest): "; read -r snap
  [ -n "$snap" ] || snap=latest
  echo "Target disks:"; for d in $(disks); do echo "  $d  $(human "$(disk_size "$d")")  $(model "$d")"; done
  printf "Target disk (name, e.g. sdb): "; read -r t
  if [ -n "$t" ] && [ -b "/dev/${t#/dev/}" ] && confirm_disk "/dev/${t#/dev/}" "restore of snapshot $snap"; then
    diskvault restore -r "$repo" "$snap" "/dev/${t#/dev/}" --force \
      && diskvault verify -r "$repo" "$snap" "/dev/${t#/dev/}" \
      && echo "Restored and verified. If the new disk is bigger, see 'Growing the file system' in docs/restore.md."
  else
    echo "Nothing restored."
  fi
  umount "$MNT/repo"
}

do_snapshot() {
  echo "Disks:"; for d in $(disks); do echo "  $d  $(human "$(disk_size "$d")")  $(model "$d")"; done
  printf "Disk to snapshot (name, e.g. nvme0n1): "; read -r s
  [ -b "/dev/${s#/dev/}" ] || { echo "no such disk"; return; }
  pick_repo || return
  mount_dev "$REPODEV" "$MNT/repo" rw || { echo "cannot mount $REPODEV read-write"; return; }
  repo=$MNT/repo$REPOPATH
  unlock_repo "$repo" "$REPODEV:$REPOPATH"
  diskvault snapshot -r "$repo" "/dev/${s#/dev/}" && diskvault verify -r "$repo" latest --source "/dev/${s#/dev/}" "/dev/${s#/dev/}"
  sync; umount "$MNT/repo"
}

while true; do
  echo
  echo "==== diskvault rescue $(cat /etc/diskvault/version) ===="
  show_disks
  echo
  echo "  r) restore a snapshot onto a disk      s) snapshot a disk into a repository"
  echo "  l) list repositories and snapshots     d) list disks again"
  echo "  x) shell (diskvault is on the PATH)    p) power off      b) reboot"
  printf "Choice: "
  read -r c || { sleep 5; continue; }
  case "$c" in
    r) do_restore;;
    s) do_snapshot;;
    l) find_repos; while read -r dev path <&3; do  # the list on fd 3: stdin stays the console
         echo "== $dev:${path:-/}"; mount_dev "$dev" "$MNT/l" ro && { unlock_repo "$MNT/l$path" "$dev:${path:-/}"
         diskvault snapshots -r "$MNT/l$path" || forget_passphrase $?; umount "$MNT/l"; }
       done 3< /tmp/repos; [ -s /tmp/repos ] || echo "No diskvault repository found on the attached disks.";;
    d) ;;
    x) echo "Type exit to return to the menu."; sh;;
    p) sync; poweroff -f;;
    b) sync; reboot -f;;
  esac
done
