"""SecureShell against real subprocesses: environment, limits, whole-tree kill, output caps, streaming."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import pytest

from pyagent.shell import CommandNotFoundError, Confinement, ResourceLimits, SecureShell

pytestmark = pytest.mark.timeout(60)
PY = sys.executable


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_secrets_never_reach_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("MY_SETTING", "visible")
    result = SecureShell(env_allow=["MY_SETTING"]).run_sync(["env"], env={"EXTRA": "given"})
    assert result.exit_code == 0
    names = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert "OPENAI_API_KEY" not in names and "GITHUB_TOKEN" not in names
    assert "sk-test-very-secret" not in result.stdout and "ghp_secret" not in result.stdout
    assert names["MY_SETTING"] == "visible"
    assert names["LC_ALL"] == "C.UTF-8"
    assert names["EXTRA"] == "given"
    assert "PATH" in names


def test_exit_code_output_cwd_and_closed_stdin(tmp_path: Path) -> None:
    sh = SecureShell()
    r = sh.run_sync([PY, "-c", "import os,sys; print(os.getcwd()); print(repr(sys.stdin.read())); "
                     "print('err', file=sys.stderr); sys.exit(7)"], cwd=tmp_path)
    assert r.exit_code == 7 and not r.ok
    assert r.stdout.splitlines() == [str(tmp_path), "''"]
    assert r.stderr == "err\n"
    assert not r.timed_out and not r.killed and not r.truncated
    assert r.duration > 0


def test_no_shell_unless_asked() -> None:
    sh = SecureShell()
    r = sh.run_sync(["echo", "$HOME;", "rm", "-rf", "x"])
    assert r.stdout == "$HOME; rm -rf x\n"
    r = sh.run_sync("echo one && exit 3", shell=True)
    assert (r.stdout, r.exit_code) == ("one\n", 3)
    with pytest.raises(TypeError, match="shell=True"):
        sh.run_sync("echo x")


def test_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    sh = SecureShell()
    with pytest.raises(CommandNotFoundError, match="no-such-tool-xyz"):
        sh.run_sync(["no-such-tool-xyz", "--flag"])
    with pytest.raises(CommandNotFoundError, match="not an executable"):
        sh.run_sync([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="working directory"):
        sh.run_sync(["true"], cwd=tmp_path / "missing")


def test_timeout_kills_the_whole_tree_including_setsid_grandchild(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        f"out = open({str(pids)!r}, 'w')\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "esc = subprocess.Popen(['setsid', 'sh', '-c', 'trap \"\" TERM; sleep 300 & echo $! ; wait'],"
        " stdout=subprocess.PIPE, text=True)\n"
        "grand = esc.stdout.readline().strip()\n"
        "out.write(f'{os.getpid()} {child.pid} {esc.pid} {grand}\\n'); out.close()\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    # The supervisor's own tree kill (subreaper), i.e. the path where no PID namespace exists; the PID
    # namespace path is tests/security/test_lifetime.py. Unconfined so that the pids written are host pids.
    sh = SecureShell(kill_grace=0.5, confine=Confinement.off())
    start = time.monotonic()
    r = sh.run_sync([PY, "-c", script], timeout=2)
    assert r.timed_out and r.killed and r.exit_code is None
    assert "ready" in r.stdout
    assert time.monotonic() - start < 15
    tree = [int(x) for x in pids.read_text().split()]
    assert len(tree) == 4
    # the setsid'd shell really left the process group and session of the command
    time.sleep(0.2)
    still = [p for p in tree if alive(p)]
    assert still == [], f"processes of the tree still alive: {still}"


def test_background_process_left_behind_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "bg"
    r = SecureShell(confine=Confinement.off()).run_sync(f"setsid sleep 300 & echo $! > {marker}", shell=True,
                                                         timeout=20)
    assert r.exit_code == 0 and not r.timed_out
    pid = int(marker.read_text())
    time.sleep(0.1)
    assert not alive(pid)
    assert r.leftovers >= 1


def test_background_process_left_behind_in_the_pid_namespace_is_counted_and_gone(tmp_path: Path) -> None:
    marker = f"pyagent-bg-{os.getpid()}-{time.monotonic_ns()}"
    r = SecureShell().run_sync(f"setsid sh -c 'sleep 300; : {marker}' & echo started", shell=True, timeout=20,
                               cwd=tmp_path)
    assert r.exit_code == 0 and not r.timed_out and r.leftovers >= 1
    time.sleep(0.1)
    left = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    left.append(name)
    assert left == []


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_endless_printer_is_cut_off_with_bounded_memory() -> None:
    cap = 64 * 1024
    rss_before = rss_bytes()
    r = SecureShell(max_output_bytes=cap).run_sync(["yes", "spam spam spam"], timeout=1.5)
    grown = rss_bytes() - rss_before
    assert r.timed_out
    assert r.truncated and r.dropped_bytes > 10 * cap
    assert grown < 16 << 20, f"memory grew {grown} bytes while {r.dropped_bytes} bytes were dropped"
    assert len(r.stdout.encode()) < cap + 200  # head + tail + the marker line
    assert "bytes dropped by the output cap" in r.stdout
    assert r.stdout.startswith("spam spam spam\n") and r.stdout.endswith("spam\n")


def test_fork_bomb_is_stopped_by_the_process_limit() -> None:
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(2000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        print('fork refused after', n, flush=True); break\n"
        "else:\n"
        "    print('no limit', flush=True)\n"
    )
    r = SecureShell(limits=ResourceLimits(processes=40)).run_sync([PY, "-c", bomb], timeout=40)
    assert "fork refused after" in r.stdout, r.stdout + r.stderr
    made = int(r.stdout.split("after")[1])
    assert made < 45


def test_file_size_limit(tmp_path: Path) -> None:
    code = (
        "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "f = open('big', 'wb')\n"
        "try:\n    f.write(b'x' * 200_000); f.flush()\nexcept OSError as e:\n    print('refused', e.errno)\n"
    )
    r = SecureShell(limits=ResourceLimits(file_size=50_000)).run_sync([PY, "-c", code], cwd=tmp_path)
    assert "refused 27" in r.stdout  # EFBIG
    assert (tmp_path / "big").stat().st_size <= 50_000


def test_cpu_limit_kills_a_spinning_process() -> None:
    r = SecureShell(limits=ResourceLimits(cpu_seconds=1)).run_sync([PY, "-c", "while True: pass"], timeout=30)
    assert not r.timed_out
    assert r.killed and r.signal in (9, 24)  # SIGXCPU at the soft limit (= hard, so SIGKILL may follow)
    assert r.exit_code is not None and r.exit_code < 0


def test_address_space_limit() -> None:
    code = "b = bytearray(512 * 1024 * 1024)\nprint('allocated')"
    r = SecureShell(limits=ResourceLimits(address_space=256 * 1024 * 1024)).run_sync([PY, "-c", code])
    assert r.exit_code != 0 and "MemoryError" in r.stderr


def test_streamed_lines_arrive_before_the_process_ends() -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)"
    seen: list[tuple[float, str, str]] = []
    start = time.monotonic()
    r = SecureShell().run_sync([PY, "-c", code], on_line=lambda s, line: seen.append((time.monotonic(), s, line)))
    end = start + r.duration
    assert [(s, line) for _, s, line in seen] == [("stdout", "first"), ("stdout", "second")]
    assert seen[0][0] < end - 1.0  # 'first' was delivered while the command was still sleeping


def test_async_iterator_streams_and_keeps_the_result() -> None:
    async def main() -> tuple[list[tuple[str, str]], float, float]:
        stream = SecureShell().stream([PY, "-c", "import sys,time\nprint('a', flush=True)\n"
                                       "print('b', file=sys.stderr, flush=True)\ntime.sleep(1)\nprint('c')"])
        got = []
        first_at = 0.0
        start = time.monotonic()
        async for item in stream:
            if not got:
                first_at = time.monotonic() - start
            got.append(item)
        assert stream.result is not None and stream.result.exit_code == 0
        return got, first_at, time.monotonic() - start

    got, first_at, total = asyncio.run(main())
    assert sorted(got) == [("stderr", "b"), ("stdout", "a"), ("stdout", "c")]
    assert first_at < total - 0.5


def test_concurrent_runs_in_one_loop() -> None:
    async def main() -> list[int | None]:
        sh = SecureShell()
        results = await asyncio.gather(*(sh.run(["sh", "-c", f"sleep 0.3; exit {i}"]) for i in range(4)))
        return [r.exit_code for r in results]

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_run_sync_inside_a_running_loop() -> None:
    async def main() -> int | None:
        return SecureShell().run_sync(["true"]).exit_code

    assert asyncio.run(main()) == 0


def test_no_cgroup_left_behind() -> None:
    from pyagent.shell.limits import pids_cgroup_base

    SecureShell().run_sync(["true"])
    base = pids_cgroup_base()
    if base is not None:
        mine = [n for n in os.listdir(base) if n.startswith(f"pyagent-{os.getpid()}-")]
        assert mine == []


def test_child_inherits_only_stdio() -> None:
    code = "import os; print(' '.join(sorted(os.listdir('/proc/self/fd'), key=int)))"
    r = SecureShell().run_sync([PY, "-c", code])
    fds = r.stdout.split()
    assert fds[:3] == ["0", "1", "2"] and len(fds) == 4  # the 4th is listdir's own directory handle


@pytest.mark.parametrize("freezer", ["auto", "signal"])
def test_frozen_command_does_not_run_and_its_timeout_stops_meanwhile(tmp_path: Path, freezer: str) -> None:
    # Each count is written whole (write then rename), so a freeze between truncate and write cannot
    # leave an empty file for the reader.
    code = (
        "import os, time\nfor i in range(20):\n"
        "    open('n.tmp', 'w').write(str(i)); os.replace('n.tmp', 'n'); time.sleep(0.1)\nprint('done')"
    )

    async def main() -> tuple[int, int, float, object]:
        sh = SecureShell(timeout=3.0, confine=Confinement(freezer=freezer))  # type: ignore[arg-type]
        cmd = await sh.start([PY, "-c", code], cwd=tmp_path)
        while not (tmp_path / "n").exists():
            await asyncio.sleep(0.05)
        cmd.freeze()
        await asyncio.sleep(0.3)
        before = int((tmp_path / "n").read_text())
        await asyncio.sleep(2.0)
        after = int((tmp_path / "n").read_text())
        cmd.thaw()
        res = await cmd.wait()
        return before, after, res.frozen_seconds, res

    before, after, frozen, res = asyncio.run(main())
    assert before == after, "it ran while frozen"
    assert res.ok and res.stdout.strip() == "done"  # type: ignore[attr-defined]
    assert frozen >= 2.2 and res.duration > 3.0  # type: ignore[attr-defined]  # past its timeout: clock stopped
