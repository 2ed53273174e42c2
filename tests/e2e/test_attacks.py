"""Share users are attackers: what one can put in the four shared folders, and what the daemon does.

The daemon runs as its own unprivileged account and every attack is made by a second account
that is only in the share group (tests/attackers.py makes both with useradd), on folders laid
out as docs/security.md says: the holding folder and the state are the service's, the four
shared folders ``i2vd:share 2775``. Beside them, ``outside/`` holds what an attacker wants: a
secret only the service user may read, a public file, a folder with a valid pair.

After every attack the same four things are checked (``Guard.holds``): nothing outside the
share was written, moved or deleted (a snapshot before and after), no file in the shared
folders (outputs/index.html included) holds the secret, the daemon still runs (never
restarted behind our back), and a good pair dropped after the bad things still becomes a clip.

Settings are the shipped ones (``[watch]`` from config.example.toml through write_config, the
shipped ``[limits]``); only the job is small, because this machine's CPU is the GPU here:
8 frames, 2 steps, no warm-up. The daemon starts once for the module (plus one restart and a
second daemon for the full disk). Skips, saying why, only where users cannot be made (not root).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from attackers import (
    SHARED,
    Accounts,
    Daemon,
    Lab,
    as_user,
    daemon_env,
    files_holding,
    hidden_ancestor,
    snapshot,
    unavailable,
    wait_for,
)
from helpers import EXAMPLE_CONFIG, digest, png_bytes, write_config
from PIL import Image

pytestmark = pytest.mark.slow

# Small jobs: the CPU stands in for the GPU. Everything else as shipped.
GENERATION = {"num_frames": 8, "steps": 2}
JOB_TIMEOUT = 600.0
PROMPT = "a paper boat drifts on a pond\n"
BAD_SIDECAR = 'prompt = "a boat"\nnot_a_setting = 1\n'  # an unknown key fails the job at once
SHIPPED_LIMITS: dict[str, Any] = tomllib.loads(EXAMPLE_CONFIG.read_text())["limits"]
DEPTH = 1100  # folders, one in another: more than Python's recursion limit


def image(seed: int = 0) -> bytes:
    return png_bytes(seed=seed, size=(64, 48))


# --- the lab: users, folders, config, model ----------------------------------------------------


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    made = Accounts.create()
    try:
        yield made
    finally:
        made.remove()


def new_lab(accounts: Accounts, tiny_model_dir: Path, base: Path, cache: Path | None = None) -> Lab:
    """Folders as docs/security.md lays them out, the config ``root:service 0640``, the tiny
    model in a cache the service user owns (``cache``: one made by another lab)."""
    lab = Lab(base, accounts)
    lab.make(image(99))
    svc = accounts.service
    models = cache or base / "cache" / "models"
    if cache is None:
        shutil.copytree(tiny_model_dir, models / tiny_model_dir.name)
        for dirpath, dirnames, filenames in os.walk(base / "cache"):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.chown(name, svc.uid, svc.gid)
    paths = {name: os.fspath(lab.folder(name)) for name in SHARED}
    config = write_config(base / "etc", "tiny", GENERATION, paths=paths)
    # write_config's own [model] table, with the service's cache and no warm-up (saves CPU).
    model = f"cache_dir = {json.dumps(os.fspath(models))}\nwarmup = false\n"
    config.write_text(config.read_text().replace("[model]\n", "[model]\n" + model, 1))
    os.chown(config, 0, svc.gid)
    config.chmod(0o640)
    return lab


def remove_tree(path: Path) -> None:
    # rm, not shutil.rmtree: the attack trees are deeper than Python's recursion limit.
    subprocess.run(["rm", "-rf", "--one-file-system", os.fspath(path)], check=False)


@pytest.fixture(scope="module")
def lab(accounts: Accounts, tiny_model_dir: Path) -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="i2vd-attacks-"))
    if hidden_ancestor(base) is not None:
        remove_tree(base)
        pytest.skip(f"{base} is in a folder other users may not enter; set TMPDIR elsewhere")
    try:
        yield new_lab(accounts, tiny_model_dir, base)
    finally:
        remove_tree(base)


@pytest.fixture(scope="module")
def daemon(lab: Lab) -> Iterator[Daemon]:
    d = Daemon(lab)
    d.start()
    try:
        yield d
    finally:
        d.stop()


# --- what every attack must leave intact --------------------------------------------------------


def leaks(lab: Lab) -> set[str]:
    """Files in the shared folders that hold the secret (the service user's, 0600, outside)."""
    return set().union(*(files_holding(lab.folder(name), lab.token.encode()) for name in SHARED))


def job_of(lab: Lab, name: str, rel: str = "") -> str | None:
    """The JOB folder made for ``name`` in outputs/rel, once its clip is there."""
    folder = lab.folder("outputs") / rel
    try:
        jobs = sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}_"))
    except OSError:
        return None
    return next((j for j in jobs if (folder / j / f"{j}.mp4").is_file()), None)


def failed_job(lab: Lab, name: str, rel: str = "") -> str | None:
    folder = lab.folder("failed") / rel
    try:
        jobs = sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}_"))
    except OSError:
        return None
    return next((j for j in jobs if (folder / j / "error.txt").is_file()), None)


class Guard:
    """Taken before an attack; ``holds`` checks afterwards that it reached nothing."""

    def __init__(self, lab: Lab, daemon: Daemon) -> None:
        self.lab, self.daemon = lab, daemon
        if not daemon.running:  # an earlier attack took it down: that test has failed already
            daemon.start()
        self.before = snapshot(lab.outside)
        self.leaks = leaks(lab)
        self.starts = daemon.starts
        self.mark = len(daemon.events)
        self.held = False

    def holds(self, good: str, *, restarted: bool = False) -> str:
        """A good pair dropped now becomes a clip; nothing outside changed; no secret shown."""
        lab, daemon = self.lab, self.daemon
        lab.drop("", good, image(7), PROMPT)
        job = wait_for(f"the clip of {good}", lambda: job_of(lab, good), JOB_TIMEOUT, daemon)
        assert daemon.running and daemon.starts == self.starts + restarted, "the daemon stopped"
        after = snapshot(lab.outside)
        changed = sorted(k for k in after.keys() | self.before.keys() if after.get(k) != self.before.get(k))
        assert changed == [], f"written, moved or deleted outside the share: {changed}"
        assert leaks(lab) - self.leaks == set(), "the secret appeared on the share"
        self.held = True
        return str(job)


@pytest.fixture
def guard(lab: Lab, daemon: Daemon) -> Iterator[Guard]:
    g = Guard(lab, daemon)
    yield g
    if not g.held:
        # The attack got through (or the test stopped early): the next one gets a fresh daemon,
        # so that it fails for its own attack only.
        daemon.stop()
        daemon.start()


def status(lab: Lab) -> dict[str, Any]:
    out = lab.i2vd("status", "--json")
    return dict(json.loads(out.stdout))


def idle(lab: Lab) -> bool:
    """Nothing ready, generating or encoding: everything dropped before is filed."""
    s = status(lab)
    return not any(s.get(key) for key in ("queue", "in_flight", "current", "encoding"))


def settled(lab: Lab, daemon: Daemon) -> None:
    wait_for("the queue to empty", lambda: idle(lab), JOB_TIMEOUT, daemon)


def where(lab: Lab, name: str) -> list[Path]:
    """Every regular file named ``name`` under the holding folder (state included), links not
    followed; iterative, as the attack trees are deeper than Python's recursion limit."""
    found, stack = [], [lab.srv]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.name == name and entry.is_file(follow_symlinks=False):
                    found.append(Path(entry.path))
    return found


# --- the state folder ---------------------------------------------------------------------------


def test_the_share_user_can_neither_write_nor_replace_the_state(
    lab: Lab, daemon: Daemon, guard: Guard
) -> None:
    state, srv = os.fspath(lab.state), os.fspath(lab.srv)
    tried = lab.attack(
        """
def create(path):
    open(path, "x").close()
claimed = os.path.join(state, "claimed")
result = {
    "a file in the state": attempt(create, os.path.join(state, "planted")),
    "ray-private.json": attempt(create, os.path.join(state, "ray-private.json")),
    "a claim folder": attempt(os.mkdir, os.path.join(claimed, "evil_20200101_000000")),
    "a claim.json": attempt(create, os.path.join(claimed, "claim.json")),
    "status.json replaced": attempt(create, os.path.join(state, "status.json.new")),
    "the state renamed away": attempt(os.rename, state, state + "-old"),
    "a second state beside it": attempt(os.mkdir, os.path.join(srv, ".i2vd-new")),
    "a shared folder renamed away": attempt(os.rename, os.path.join(srv, "inbox"), os.path.join(srv, "x")),
    "the state opened up": attempt(os.chmod, state, 0o777),
}
""",
        state=state,
        srv=srv,
    )
    assert tried == {
        "a file in the state": "EACCES",
        "ray-private.json": "EACCES",
        "a claim folder": "EACCES",
        "a claim.json": "EACCES",
        "status.json replaced": "EACCES",
        "the state renamed away": "EACCES",
        "a second state beside it": "EACCES",
        "a shared folder renamed away": "EACCES",
        "the state opened up": "EPERM",
    }
    guard.holds("good-state")


def test_the_state_is_the_services_alone(lab: Lab, daemon: Daemon, guard: Guard) -> None:
    """No permission for group or others, and the daemon (umask 0002, for the share) keeps it so:
    a share user cannot even list it or read status.json and the webhook deliveries (URLs with
    tokens)."""
    st = os.stat(lab.state)
    assert (oct(st.st_mode & 0o077), st.st_uid) == (oct(0), lab.accounts.service.uid)
    tried = lab.attack(
        """
result = {
    "list": attempt(os.listdir, state),
    "read status.json": attempt(lambda: open(os.path.join(state, "status.json")).read()),
}
""",
        state=os.fspath(lab.state),
    )
    assert tried == {"list": "EACCES", "read status.json": "EACCES"}
    guard.holds("good-private")


def test_a_forged_private_ray_record_ends_no_process_and_removes_nothing(lab: Lab, daemon: Daemon) -> None:
    """A share user cannot write it (above); a forged one, put there as the service user could,
    must still be read as a stranger's: no process it names is killed, no folder it names removed."""
    victim = lab.base / "outside-ray"
    victim.mkdir()
    os.chown(victim, lab.accounts.service.uid, lab.accounts.service.gid)
    (victim / "keep.txt").write_text("the operator's\n")
    os.chown(victim / "keep.txt", lab.accounts.service.uid, lab.accounts.service.gid)
    # A process of the service user's with a file open in that folder (what the reaper ends).
    holder = [
        sys.executable,
        "-I",
        "-c",
        f"f = open({os.fspath(victim / 'keep.txt')!r}); import time; time.sleep(600)",
    ]
    sentinel = subprocess.Popen(as_user(lab.accounts.service, holder, holder=lab.base / "holder"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    mark = lab.state / "ray-private.json"
    try:
        wait_for("the sentinel to hold its file", lambda: _holds_open(sentinel.pid, victim), 60)
        mark.write_text(json.dumps({"pid": dead.pid, "temp_dir": os.fspath(victim)}) + "\n")
        os.chown(mark, lab.accounts.service.uid, lab.accounts.service.gid)
        code = "import sys, pathlib, daemon.cluster.private as p; print(p.reap(pathlib.Path(sys.argv[1])))"
        argv = [sys.executable, "-c", code, os.fspath(lab.state)]
        out = lab.run_as(lab.accounts.service, argv, env=daemon_env(lab), timeout=120, cwd="/")
        assert out.returncode == 0, out.stderr
        assert sentinel.poll() is None, "the forged record got a process killed"
        assert (victim / "keep.txt").read_text() == "the operator's\n"
    finally:
        sentinel.kill()
        sentinel.wait()
        mark.unlink(missing_ok=True)
        remove_tree(victim)
    assert daemon.running


def _holds_open(pid: int, folder: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(os.fspath(folder) + "/"):
                return True
        except OSError:
            continue
    return False


# --- links, hard links, special files -----------------------------------------------------------


def test_team_folders_swapped_for_links_to_elsewhere_lead_nowhere(
    lab: Lab, daemon: Daemon, guard: Guard
) -> None:
    outside = os.fspath(lab.outside)
    tried = lab.attack(
        """
result = {}
for base in ("outputs", "done", "failed"):
    result[base] = attempt(os.symlink, outside, os.path.join(srv, base, "team"))
result["inbox"] = attempt(os.symlink, os.path.join(outside, "pairs"), os.path.join(srv, "inbox", "linked"))
""",
        srv=os.fspath(lab.srv),
        outside=outside,
    )
    assert set(tried.values()) == {"ok"}, tried
    lab.drop("team", "boat", image(1), PROMPT)
    lab.drop("team", "broken", image(2), BAD_SIDECAR, "toml")
    inputs = {
        name: digest(lab.folder("inbox") / "team" / name)
        for name in ("boat.png", "boat.txt", "broken.png", "broken.toml")
    }
    guard.holds("good-links")
    settled(lab, daemon)
    # The team's files are not lost: each is still somewhere under the holding folder, whole.
    for name, sha in inputs.items():
        assert [digest(p) for p in where(lab, name)] == [sha], name
    # The pair outside, reachable by the inbox link, stayed where it was (the guard checked).
    assert (lab.outside / "pairs" / "cat.png").is_file()
    # What it refused, it says (naming the folder).
    said = [e for e in daemon.warnings(guard.mark) if "team" in json.dumps(e) or "linked" in json.dumps(e)]
    assert said, daemon.warnings(guard.mark)


def test_the_kernel_refuses_a_share_user_a_hard_link_to_a_file_not_theirs(
    lab: Lab, daemon: Daemon, guard: Guard
) -> None:
    """A hard link of the secret into the inbox would hand its content to the daemon's pipeline.
    Linux refuses it (fs.protected_hardlinks = 1, the default of Debian and most distributions):
    a user may hard-link only files they own or may both read and write."""
    if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() != "1":
        pytest.skip("fs.protected_hardlinks is off on this machine: docs/security.md says to turn it on")
    inbox = lab.folder("inbox")
    tried = lab.attack(
        """
result = {
    "secret": attempt(os.link, secret, os.path.join(inbox, "stolen.png")),
    "public": attempt(os.link, public, os.path.join(inbox, "stolen.txt")),
}
""",
        secret=os.fspath(lab.secret),
        public=os.fspath(lab.outside / "public.txt"),
        inbox=os.fspath(inbox),
    )
    assert tried == {"secret": "EPERM", "public": "EPERM"}
    guard.holds("good-hardlink")


def test_fifos_devices_and_links_in_the_inbox_are_not_opened(lab: Lab, daemon: Daemon, guard: Guard) -> None:
    inbox = lab.folder("inbox")
    tried = lab.attack(
        """
def put(name, data):
    with open(os.path.join(inbox, name), "wb") as f:
        f.write(data)
result = {
    "fifo image": attempt(os.mkfifo, os.path.join(inbox, "fifo.png")),
    "fifo prompt": attempt(os.mkfifo, os.path.join(inbox, "quiet.txt")),
    "linked image": attempt(os.symlink, secret, os.path.join(inbox, "linked.png")),
    "linked prompt": attempt(os.symlink, public, os.path.join(inbox, "borrowed.txt")),
}
put("fifo.txt", b"a pipe\\n")
put("quiet.png", bytes.fromhex(png))
put("linked.txt", b"a link\\n")
put("borrowed.png", bytes.fromhex(png))
""",
        inbox=os.fspath(inbox),
        secret=os.fspath(lab.secret),
        public=os.fspath(lab.outside / "public.txt"),
        png=image(3).hex(),
    )
    assert set(tried.values()) == {"ok"}, tried
    # A share user cannot make device nodes (no CAP_MKNOD); one that got there anyway (a
    # misconfigured NFS export) is put there by root: /dev/zero's numbers, an endless read.
    os.mknod(inbox / "zero.png", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.chown(inbox / "zero.png", lab.accounts.attacker.uid, lab.accounts.share_gid)
    (inbox / "zero.txt").write_text("endless\n")
    os.chown(inbox / "zero.txt", lab.accounts.attacker.uid, lab.accounts.share_gid)
    guard.holds("good-special")  # a reader stuck on a FIFO or /dev/zero would never get here
    # Nothing read through the prompt link: the public file's text is in no job's record.
    for name in ("outputs", "done", "failed"):
        assert files_holding(lab.folder(name), b"anyone may read this") == set(), name


def test_a_tree_1100_folders_deep_does_not_stop_the_daemon(lab: Lab, daemon: Daemon, guard: Guard) -> None:
    bottom = lab.attack(
        """
os.makedirs(inbox)
os.chdir(inbox)
for _ in range(depth):
    os.mkdir("d")
    os.chdir("d")
for name, blob in (("deep.png", png), ("deep.txt", "6120626f6174")):
    with open(name, "wb") as f:
        f.write(bytes.fromhex(blob))
result = os.getcwd()
""",
        inbox=os.fspath(lab.folder("inbox") / "deep"),
        depth=DEPTH,
        png=image(4).hex(),
    )
    try:
        guard.holds("good-deep")
        assert len(where(lab, "deep.png")) == 1, "the deep pair was lost"
        assert Path(bottom).is_dir()
        # What it refused, it says (naming the folder).
        said = [e for e in daemon.warnings(guard.mark) if "deep" in json.dumps(e)]
        assert said, daemon.warnings(guard.mark)
    finally:
        remove_tree(lab.folder("inbox") / "deep")  # later attacks must not trip over this one


# --- what is in the files -----------------------------------------------------------------------


ABSURD: dict[str, tuple[str, str]] = {
    "frames-huge": ("toml", 'prompt = "x"\nnum_frames = 1000000000000000000\n'),
    "steps-float": ("toml", 'prompt = "x"\nsteps = 1e308\n'),
    "fps-inf": ("toml", 'prompt = "x"\nfps = inf\n'),
    "guidance-nan": ("toml", 'prompt = "x"\nguidance_scale = nan\n'),
    "seed-huge": ("json", '{"prompt": "x", "seed": 1' + "0" * 400 + "}"),
    "frames-1e999": ("json", '{"prompt": "x", "num_frames": 1e999}'),
    "steps-negative": ("json", '{"prompt": "x", "steps": -9223372036854775809}'),
    "resolution-huge": ("toml", 'prompt = "x"\nresolution = "99999999p"\n'),
    "nested-json": ("json", '{"prompt": ' + "[" * 30000 + "]" * 30000 + "}"),
    "nested-toml": ("toml", "prompt = " + "[" * 30000 + "]" * 30000 + "\n"),
}


def test_absurd_numbers_in_prompt_files_fail_only_those_jobs(lab: Lab, daemon: Daemon, guard: Guard) -> None:
    before = {}
    for i, (name, (ext, text)) in enumerate(ABSURD.items()):
        lab.drop("absurd", name, image(10 + i), text, ext)
        folder = lab.folder("inbox") / "absurd"
        before[name] = {f.name: digest(f) for f in folder.glob(f"{name}.*")}
    guard.holds("good-absurd")
    settled(lab, daemon)
    for name, files in before.items():
        job = failed_job(lab, name, "absurd")
        assert job is not None, f"{name} is not in failed/: {where(lab, f'{name}.png')}, {status(lab)}"
        kept = lab.folder("failed") / "absurd" / job
        assert {f: digest(kept / f) for f in files} == files, name  # byte-identical
        assert (kept / "error.txt").read_text().strip(), name


def png_16bit(width: int, height: int, channels: int) -> bytes:
    """A 16-bit PNG (grey or RGB) written by hand: Pillow writes 16-bit grey only."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 65536, (height, width * channels), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = {1: 0, 3: 2}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16_bit_pngs_become_clips(lab: Lab, daemon: Daemon, guard: Guard) -> None:
    for name, channels in (("grey16", 1), ("rgb16", 3)):
        data = png_16bit(64, 48, channels)
        assert Image.open(io.BytesIO(data)).size == (64, 48)
        lab.drop("bits16", name, data, PROMPT)
    guard.holds("good-16bit")
    settled(lab, daemon)
    for name in ("grey16", "rgb16"):
        assert job_of(lab, name, "bits16") is not None, f"no clip of {name}: {where(lab, f'{name}.png')}"


def other_formats() -> dict[str, bytes]:
    """Images Pillow reads, in formats outside the allow-list, each named ``.png``."""
    out = {}
    pic = Image.fromarray(np.random.default_rng(6).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    for fmt in ("PCX", "PPM", "SGI", "TGA"):
        buf = io.BytesIO()
        pic.save(buf, format=fmt)
        out[f"fmt-{fmt.lower()}"] = buf.getvalue()
    # PostScript: Pillow would hand it to Ghostscript, an interpreter of its own.
    out["fmt-eps"] = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\nshowpage\n"
    return out


def test_images_outside_the_allow_list_fail_without_being_decoded(
    lab: Lab, daemon: Daemon, guard: Guard
) -> None:
    formats = other_formats()
    for name, data in formats.items():
        lab.drop("formats", name, data, PROMPT)
    guard.holds("good-formats")
    settled(lab, daemon)
    for name, data in formats.items():
        job = failed_job(lab, name, "formats")
        made = job_of(lab, name, "formats")
        assert job is not None and made is None, f"{name} was not refused: {where(lab, f'{name}.png')}"
        assert digest(lab.folder("failed") / "formats" / job / f"{name}.png") == digest(data)


ESCAPES = "esc\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\x9bX"


def test_escape_sequences_in_names_never_reach_the_operators_terminal(
    lab: Lab, daemon: Daemon, guard: Guard
) -> None:
    lab.drop("", ESCAPES, image(8), BAD_SIDECAR, "toml")  # fails: listed under recent results
    lab.attack(  # an image alone waits for its prompt file: listed as arriving
        "open(path, 'wb').write(bytes.fromhex(png))",
        path=os.fspath(lab.folder("inbox") / f"lone{ESCAPES}.png"),
        png=image(9).hex(),
    )
    guard.holds("good-escapes")
    shown = wait_for(
        "both names in i2vd status",
        lambda: (s := lab.i2vd("status").stdout).count("owned") >= 2 and s,
        180,  # the failed job is made first: minutes on two loaded cores
        daemon,
    )
    controls = sorted(
        {f"{ord(c):#04x}" for c in shown if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0}
    )
    assert controls == [], f"control characters printed by i2vd status: {controls}\n{shown!r}"
    json.loads(lab.i2vd("status", "--json").stdout)  # the JSON form escapes them itself


# --- attacks that show at the next start --------------------------------------------------------


def record(stem: str, **changes: object) -> dict[str, Any]:
    """A claim record as the daemon writes one, with ``changes``."""
    job = f"{stem}_20200101_000000"
    fields = {"job": job, "stem": stem, "rel_dir": ".", "files": [], "claimed_at": "2020-01-01T00:00:00"}
    return {**fields, "attempts": 1, "sigs": {}, "src_dir": None, **changes}


def forged_claim(lab: Lab, record: dict[str, Any], inputs: dict[str, bytes]) -> None:
    """A claim record as a stranger would write it, owned by the service user like its own."""
    svc = lab.accounts.service
    folder = lab.state / "claimed" / str(record["job"])
    (folder / "inputs").mkdir(parents=True)
    for name, data in inputs.items():
        (folder / "inputs" / name).write_bytes(data)
    (folder / "claim.json").write_text(json.dumps(record))
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, svc.uid, svc.gid)


@pytest.fixture(scope="module")
def restarted(lab: Lab, daemon: Daemon) -> Guard:
    """Forged claims in the state, a failed job's error.txt and a done job's JOB.json swapped for
    links to secrets, the share page swapped for a link to a page elsewhere, deep trees in done/
    and failed/; then the daemon restarts and reads all of it back."""
    guard = Guard(lab, daemon)
    lab.drop("", "spoiled", image(11), BAD_SIDECAR, "toml")
    lab.drop("", "record", image(12), PROMPT)
    failed = wait_for("spoiled in failed/", lambda: failed_job(lab, "spoiled"), JOB_TIMEOUT, daemon)
    done = wait_for("the clip of record", lambda: job_of(lab, "record"), JOB_TIMEOUT, daemon)
    daemon.stop()
    # Takes a file from wherever src_dir says (an absolute path replaces the inbox).
    forged_claim(lab, record("evilsrc", files=["secret-claim.txt"], src_dir=os.fspath(lab.outside)), {})
    # Files its outputs wherever rel_dir climbs to.
    pair = {"evilrel.png": image(13), "evilrel.txt": PROMPT.encode()}
    forged_claim(lab, record("evilrel", files=list(pair), rel_dir="../../outside"), pair)
    # Names a file by a path that climbs out of inputs/.
    forged_claim(lab, record("evilname", files=["../../../../../outside/public.txt"]), {})
    tried = lab.attack(
        """
def relink(path, target):
    os.unlink(path)
    os.symlink(target, path)
result = {
    "error.txt": attempt(relink, os.path.join(failed, "error.txt"), secret),
    "JOB.json": attempt(relink, os.path.join(done, job + ".json"), record),
    "index.html": attempt(relink, page, elsewhere),
}
for base in (failed_root, outputs_root):
    os.chdir(base)
    os.mkdir("deep")
    os.chdir("deep")
    for _ in range(depth):
        os.mkdir("d")
        os.chdir("d")
""",
        failed=os.fspath(lab.folder("failed") / failed),
        done=os.fspath(lab.folder("outputs") / done),
        job=done,
        page=os.fspath(lab.folder("outputs") / "index.html"),
        secret=os.fspath(lab.secret),
        record=os.fspath(lab.outside / "secret-record.txt"),
        elsewhere=os.fspath(lab.outside / "page.html"),
        failed_root=os.fspath(lab.folder("failed")),
        outputs_root=os.fspath(lab.folder("outputs")),
        depth=DEPTH,
    )
    assert set(tried.values()) == {"ok"}, tried
    guard.starts = daemon.starts + 1  # the one restart below is ours
    daemon.start()
    return guard


def test_forged_claims_are_read_as_a_strangers_and_run_nothing(
    lab: Lab, daemon: Daemon, restarted: Guard
) -> None:
    restarted.holds("good-forged")
    for stem in ("evilsrc", "evilrel", "evilname"):
        made = [p for base in ("outputs", "done", "failed") for p in lab.folder(base).glob(f"{stem}_*")]
        assert made == [], made
    assert (lab.outside / "secret-claim.txt").is_file() and (lab.outside / "public.txt").is_file()


def test_the_page_rebuilt_at_start_shows_no_linked_secret(lab: Lab, daemon: Daemon, restarted: Guard) -> None:
    """Checked apart from the forged claims of the same restart (the test above has those): the
    page, error.txt and JOB.json alone."""
    lab.drop("", "good-page", image(15), PROMPT)
    wait_for("the clip of good-page", lambda: job_of(lab, "good-page"), JOB_TIMEOUT, daemon)
    page = lab.folder("outputs") / "index.html"
    wait_for("the page to show the new job", lambda: "good-page" in page.read_text(), 60, daemon)
    assert page.is_file() and not page.is_symlink()  # the link was replaced, not written through
    assert lab.token not in page.read_text()
    assert (lab.outside / "page.html").read_text() == "<p>the operator's own page</p>\n"
    for name in ("secret.txt", "secret-record.txt"):
        assert (lab.outside / name).read_text() == f"{lab.token}\n"
    assert daemon.running


# --- a full disk (its own small file system and its own daemon) ---------------------------------


def fill(lab: Lab, path: Path, leave: int) -> None:
    """The share user writes ``path`` until the disk is full, then gives back ``leave`` bytes."""
    lab.attack(
        """
f = open(path, "wb")
for size in (1 << 20, 1 << 12, 1):
    block = bytes(size)
    try:
        while True:
            f.write(block)
            f.flush()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        f = open(path, "ab")  # the failed buffer is dropped with the old handle
f.close()
os.truncate(path, max(0, os.path.getsize(path) - leave))
result = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
""",
        path=os.fspath(path),
        leave=leave,
    )


@pytest.fixture
def small_disk(lab: Lab, accounts: Accounts, tiny_model_dir: Path, daemon: Daemon) -> Iterator[Lab]:
    """A second installation whose folders are a tmpfs just larger than ``[limits] min_free_mb``."""
    daemon.stop()  # one daemon at a time on this small machine
    base = lab.base / "disk"
    base.mkdir()
    (base / "srv").mkdir()
    room = int(SHIPPED_LIMITS.get("min_free_mb", 0)) + 24
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={room}m,mode=0755", "i2vd-full", os.fspath(base / "srv")],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield new_lab(accounts, tiny_model_dir, base, cache=lab.base / "cache" / "models")
    finally:
        subprocess.run(["umount", "--lazy", os.fspath(base / "srv")], check=False)


def test_a_full_disk_makes_jobs_wait_and_they_go_on_by_themselves(small_disk: Lab) -> None:
    lab = small_disk
    assert "min_free_mb" in SHIPPED_LIMITS, "config.example.toml [limits] has no min_free_mb"
    full = Daemon(lab)
    full.start()
    try:
        guard = Guard(lab, full)
        inbox = lab.folder("inbox")
        # Below min_free_mb (a megabyte left): the pair waits, and status and page say why.
        fill(lab, inbox / ".filler-1", 1 << 20)
        lab.drop("", "patient", image(14), PROMPT)
        before = {p.name: digest(p) for p in inbox.glob("patient.*")}

        def says_full() -> bool:
            text = (lab.i2vd("status").stdout + _page(lab)).lower()
            return "full" in text or "space" in text

        wait_for("status and page to say the disk is full", says_full, 120, full)
        # Then nothing left at all: the daemon keeps running and fails nothing.
        fill(lab, inbox / ".filler-2", 0)
        time.sleep(3 * float(tomllib.loads(EXAMPLE_CONFIG.read_text())["watch"]["settle_seconds"]))
        assert full.running
        assert {p.name: digest(p) for p in inbox.glob("patient.*")} == before  # still waiting, whole
        assert list(lab.folder("failed").iterdir()) == []
        # Room again: it goes on by itself.
        lab.attack(
            "for n in names: os.unlink(n)",
            names=[os.fspath(inbox / ".filler-1"), os.fspath(inbox / ".filler-2")],
        )
        wait_for("the waiting pair's clip", lambda: job_of(lab, "patient"), JOB_TIMEOUT, full)
        assert list(lab.folder("failed").iterdir()) == []
        guard.holds("good-disk")
    finally:
        full.stop()


def _page(lab: Lab) -> str:
    try:
        return (lab.folder("outputs") / "index.html").read_text()
    except OSError:
        return ""


# --- the queue's controls ---------------------------------------------------------------------------


def test_only_the_service_user_pauses_and_a_share_users_cancel_file_acts_only_in_its_own_folder(
    lab: Lab, daemon: Daemon, guard: Guard
) -> None:
    state = os.fspath(lab.state)
    tried = lab.attack(
        """
def create(path):
    open(path, "x").close()
result = [attempt(create, os.path.join(state, "paused.json")),
          attempt(os.mkdir, os.path.join(state, "requests"))]
""",
        state=state,
    )
    assert tried == ["EACCES", "EACCES"]
    paused = lab.i2vd("pause")
    assert paused.returncode == 0, paused.stderr
    try:
        st = os.stat(lab.state / "paused.json")
        assert (st.st_uid, st.st_mode & 0o777) == (lab.accounts.service.uid, 0o600)
        lab.drop("crew", "held", image(1), PROMPT)
        wait_for("the pair to wait, paused", lambda: "crew/held" in status(lab)["queue"], JOB_TIMEOUT, daemon)
        assert status(lab)["paused"]["by"] == lab.accounts.service.name
        # Another folder's request for the same name cancels nothing, and is removed.
        lab.attack("os.makedirs(d, exist_ok=True)\nopen(os.path.join(d, 'held.cancel'), 'w').close()",
                   d=os.fspath(lab.folder("inbox") / "other"))  # fmt: skip
        other = lab.folder("inbox") / "other" / "held.cancel"
        wait_for("the other folder's .cancel to be removed", lambda: not other.exists(), JOB_TIMEOUT, daemon)
        assert "crew/held" in status(lab)["queue"] and failed_job(lab, "held", "crew") is None
        crew = os.fspath(lab.folder("inbox") / "crew")
        lab.attack("open(os.path.join(d, 'held.cancel'), 'w').close()", d=crew)
        job = wait_for("the job cancelled", lambda: failed_job(lab, "held", "crew"), JOB_TIMEOUT, daemon)
        error = (lab.folder("failed") / "crew" / str(job) / "error.txt").read_text()
        assert "cancelled with the file held.cancel" in error
    finally:
        resumed = lab.i2vd("resume")
    assert resumed.returncode == 0, resumed.stderr
    guard.holds("after-the-queue")
