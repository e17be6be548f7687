#!/bin/sh
# diskvault rescue system: /init of the initramfs (busybox sh), written by `diskvault rescue build`.
#
# Loads the storage/file-system modules, then either runs the unattended job baked into the
# image (/etc/diskvault/rescue.conf) or given on the kernel command line
# (diskvault.restore=REPO_DEVICE:PATH:SNAPSHOT:TARGET, diskvault.snapshot=SOURCE:REPO_DEVICE:PATH;
# diskvault.menu ignores a baked job) and powers off, or starts the menu on every console.
# Result lines for people and tests: "DISKVAULT-RESCUE-OK ..." only after a verified job,
# "DISKVAULT-RESCUE-FAILED ..." otherwise; both followed by a power-off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=linux LANG=C.UTF-8 COLUMNS=100
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /mnt /root; mount -t tmpfs tmpfs /tmp; mount -t devpts devpts /dev/pts
ln -sf /proc/mounts /etc/mtab  # ntfs-3g checks it before it opens a volume
echo 1 > /proc/sys/kernel/printk
# consoles: the screen (tty1) and the first serial port when there is one
CONSOLES=/dev/tty1
stty -F /dev/ttyS0 115200 >/dev/null 2>&1 && CONSOLES="/dev/ttyS0 $CONSOLES"
say() { for c in $CONSOLES; do echo "$*" > "$c"; done; }
say "diskvault rescue: kernel up after $(cut -d' ' -f1 /proc/uptime) s"
for m in $(cat /lib/modules/load-order); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
say "diskvault rescue: modules loaded after $(cut -d' ' -f1 /proc/uptime) s"

UNATTENDED=; UNATTENDED_SNAPSHOT=; REPO_HINTS=
[ -r /etc/diskvault/rescue.conf ] && . /etc/diskvault/rescue.conf
for w in $(cat /proc/cmdline); do
  case "$w" in
    diskvault.restore=*) UNATTENDED=${w#diskvault.restore=};;
    diskvault.snapshot=*) UNATTENDED_SNAPSHOT=${w#diskvault.snapshot=};;
    diskvault.repo_hint=*) REPO_HINTS="${w#diskvault.repo_hint=} $REPO_HINTS";;
    diskvault.menu) UNATTENDED=; UNATTENDED_SNAPSHOT=;;
  esac
done
if [ -r /etc/diskvault/password ]; then export DISKVAULT_PASSWORD_FILE=/etc/diskvault/password; fi

dev_of() {  # LABEL=x, UUID=x, /dev/x or x -> /dev/x (waits up to 30 s for slow USB disks)
  i=0
  while [ $i -lt 60 ]; do
    case "$1" in
      LABEL=*|UUID=*) d=$(findfs "$1" 2>/dev/null);;
      /dev/*) d=$1;;
      *) d=/dev/$1;;
    esac
    [ -n "$d" ] && [ -b "$d" ] && { echo "$d"; return 0; }
    i=$((i+1)); sleep 0.5
  done
  return 1
}

fstype() { blkid -o value -s TYPE "$1" 2>/dev/null; }

mount_repo() {  # DEVICE MODE(ro|rw) -> mounted at /mnt/repo
  t=$(fstype "$1")
  mkdir -p /mnt/repo
  case "$t" in
    ntfs) ntfs-3g -o "$2" "$1" /mnt/repo;;
    "") echo "no file system found on $1"; return 1;;
    *) mount -t "$t" -o "$2" "$1" /mnt/repo;;
  esac
}

fail() { echo "DISKVAULT-RESCUE-FAILED $*"; }

unattended_restore() {  # REPO_DEVICE:PATH:SNAPSHOT:TARGET (SNAPSHOT may hold ':', e.g. latest:TAG)
  spec=$1; repodev=${spec%%:*}; rest=${spec#*:}; path=${rest%%:*}; rest=${rest#*:}
  target=${rest##*:}; snap=${rest%:*}
  echo "diskvault rescue: unattended restore of $snap from $repodev:$path onto $target"
  dev=$(dev_of "$repodev") || { fail "repository disk $repodev not found"; return 1; }
  tgt=$(dev_of "$target") || { fail "target $target not found"; return 1; }
  mount_repo "$dev" ro || { fail "cannot mount $dev read-only"; return 1; }
  repo=/mnt/repo/${path#/}
  diskvault restore -r "$repo" "$snap" "$tgt" --force --no-progress
  rc=$?
  if [ $rc -eq 8 ]; then  # damaged: name every unreadable byte range of the snapshot
    echo "damaged parts of snapshot $snap (byte ranges of the disk image):"
    diskvault verify -r "$repo" "$snap" "$tgt" --no-progress 2>&1 | grep "not compared: bytes" | head -20
  fi
  if [ $rc -ne 0 ]; then fail "restore of $snap onto $tgt exited $rc; $tgt is not restored"; umount /mnt/repo; return $rc; fi
  diskvault verify -r "$repo" "$snap" "$tgt" --no-progress
  rc=$?
  umount /mnt/repo
  if [ $rc -ne 0 ]; then fail "verify of $tgt against $snap exited $rc; $tgt is not a good copy"; return $rc; fi
  echo "DISKVAULT-RESCUE-OK restored snapshot $snap onto $tgt and verified it"
}

unattended_snapshot() {  # SOURCE:REPO_DEVICE:PATH
  spec=$1; source=${spec%%:*}; rest=${spec#*:}; repodev=${rest%%:*}; path=${rest#*:}
  echo "diskvault rescue: unattended snapshot of $source into $repodev:$path"
  src=$(dev_of "$source") || { fail "source $source not found"; return 1; }
  dev=$(dev_of "$repodev") || { fail "repository disk $repodev not found"; return 1; }
  mount_repo "$dev" rw || { fail "cannot mount $dev read-write"; return 1; }
  repo=/mnt/repo/${path#/}
  id=$(diskvault snapshot -r "$repo" "$src" --no-progress --json | sed -n 's/^  "id": "\([0-9a-f]*\)".*/\1/p')
  if [ -z "$id" ]; then fail "snapshot of $src failed"; umount /mnt/repo; return 1; fi
  diskvault verify -r "$repo" "$id" "$src" --no-progress
  rc=$?
  sync; umount /mnt/repo || rc=1
  if [ $rc -ne 0 ]; then fail "verify of snapshot $id against $src exited $rc"; return $rc; fi
  echo "DISKVAULT-RESCUE-OK snapshot $id of $src taken and verified"
}

to_consoles() { while IFS= read -r line; do say "$line"; done; }

settle() {  # until the disks and their partitions stop appearing (a disk's partitions come after it; at most 15 s)
  prev=; i=0
  while [ $i -lt 15 ]; do
    now=$(cat /proc/partitions)
    [ -n "$prev" ] && [ "$now" = "$prev" ] && return 0
    prev=$now; i=$((i+1)); sleep 1
  done
}
settle

if [ -n "$UNATTENDED$UNATTENDED_SNAPSHOT" ]; then
  {  # no input: nobody is there to type (an encrypted repository without a stored passphrase fails, exit 10)
    if [ -n "$UNATTENDED" ]; then unattended_restore "$UNATTENDED"; else unattended_snapshot "$UNATTENDED_SNAPSHOT"; fi
    echo "diskvault rescue: powering off"
  } </dev/null 2>&1 | to_consoles
  sync; sleep 1; poweroff -f
fi

export REPO_HINTS
for c in $CONSOLES; do
  setsid sh -c "exec /usr/lib/diskvault/menu.sh <$c >$c 2>&1" &
done
while true; do sleep 3600; done
