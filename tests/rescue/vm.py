"""A QEMU virtual machine for the rescue tests: TCG, OVMF, virtio disks, serial console.

``VM(disks)`` boots the first disk (raw images; ``-snapshot`` only for the rescue image so
that targets and repositories keep what the guest writes); the serial console is a Unix
socket that ``expect`` reads and ``send`` types into, and everything is also kept in
``log``. The VM is killed (by its pid) on ``close``. ANSI escapes and CRs are stripped.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd"
ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\r")
FAIL_FAST = re.compile(r"Shell> |^grub> |Kernel panic|Boot Failed", re.M)


class VMTimeout(AssertionError):
    pass


class VM:
    def __init__(self, boot: Path, *disks: Path, memory: int = 768, snapshot_boot: bool = True) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="diskvault-vm-"))
        shutil.copy(OVMF_VARS, self.tmp / "vars.fd")
        sock = self.tmp / "serial.sock"
        args = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", str(memory), "-nographic",
                "-monitor", "none", "-chardev", f"socket,id=s0,path={sock},server=on,wait=on",
                "-serial", "chardev:s0",
                "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={self.tmp / 'vars.fd'}", "-nic", "none", "-no-reboot"]
        for i, d in enumerate((boot, *disks)):
            snap = ",snapshot=on" if (i == 0 and snapshot_boot) else ""
            args += ["-drive", f"if=none,id=d{i},format=raw,file={os.path.realpath(d)}{snap}",
                     "-device", f"virtio-blk-pci,drive=d{i}" + (",bootindex=1" if i == 0 else "")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.start = time.monotonic()
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.sock.connect(str(sock))
                break
            except OSError:
                time.sleep(0.1)
        self.sock.settimeout(0.5)
        self.raw = b""

    @property
    def seconds(self) -> float:
        """Seconds since QEMU started."""
        return time.monotonic() - self.start

    @property
    def log(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def _read(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            return False
        self.raw += data
        return bool(data)

    def expect(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """Wait until ``pattern`` (regex, multiline) appears in the log from offset ``after``;
        raises VMTimeout with the log's tail on timeout, a boot failure or power-off."""
        rx = re.compile(pattern, re.M)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.log, after)
            if m:
                return m
            if FAIL_FAST.search(self.log) or time.monotonic() > end or not self._read():
                raise VMTimeout(f"{pattern!r} not seen after {time.monotonic() - self.start:.0f} s; console tail:\n"
                                + "\n".join(self.log.splitlines()[-30:]))

    def send(self, text: str) -> None:
        for ch in text.encode():  # one byte at a time: the guest's UART has a 16-byte FIFO
            self.sock.sendall(bytes([ch]))
            time.sleep(0.01)

    def wait_off(self, timeout: float) -> str:
        """Wait for the guest to power off; returns the whole log. Raises VMTimeout."""
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self._read()
        if self.proc.poll() is None:
            raise VMTimeout("the VM did not power off; console tail:\n" + "\n".join(self.log.splitlines()[-30:]))
        end = time.monotonic() + 5
        while self._read() and time.monotonic() < end:  # what was still in the socket
            pass
        return self.log

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
