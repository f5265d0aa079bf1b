"""Monitor: state from documents, pure rendering at 80x24 and 160x50, verdicts, the loop on real sockets."""

import threading

import pytest
from rich.console import Console

from agent.events import EventStream
from agent.monitor import MonitorState, render, run_monitor, verdict
from agent.publish import Publisher

ANY_PORT = "tcp://127.0.0.1:*"
REV_METRICS = {
    "volume_fraction.pore": {"value": 0.2, "relative_error": 0.072, "converged": False,
                             "rev_edge_um": None, "slices_needed": 60},
    "volume_fraction.active": {"value": 0.45, "relative_error": 0.031, "converged": True,
                               "rev_edge_um": 4.0, "slices_needed": 0},
}


def metrics_body(depth, active):
    return {"depth_slices": depth, "spacing_um": [0.03, 0.02, 0.02],
            "volume_fraction": {"pore": 0.2, "electrolyte": 0.8 - active, "active": active,
                                "unassigned": 0.12},
            "tortuosity_geometric": {"pore": {"y+": 1.83, "y-": 1.91}},
            "inner_porosity_share": 0.04}


def feed(stream, state, topic, body):
    doc = stream.emit(topic, body)
    state.update(topic, doc, received_unix_s=doc["time_unix_s"])
    return doc


def acquiring_state(stream=None, slices=140):
    """A run mid-way: slices with drift, rising active fraction, a REV not reached."""
    stream = stream or EventStream("run-acq")
    state = MonitorState(endpoint="tcp://127.0.0.1:5556")
    feed(stream, state, "heartbeat", {"uptime_s": 3725.0, "state": "processing", "interval_s": 2.0})
    for i in range(1, slices + 1):
        feed(stream, state, "status", {
            "slices_seen": i, "slices_processed": i, "last_index": i, "drift_px": [0.5 * i, -0.25 * i],
            "rate_slices_per_s": 0.03, "folder": "/data/NMC622-run7", "volume": "/data/run7.ome.zarr",
            "drift_confidence": 0.93, "uncertain_share": 0.03})
        if i % 20 == 0:
            feed(stream, state, "metrics", metrics_body(i, 0.40 + 0.0005 * i))
    feed(stream, state, "rev", {"representative": False, "tolerance": 0.05, "depth_slices": slices,
                                "metrics": REV_METRICS, "not_stationary": [],
                                "reasons": ["volume_fraction.pore: relative error 7.2% > 5%"]})
    state.tick(stream.latest("status")["time_unix_s"] + 0.5)
    return stream, state


def screen(state, width, height):
    console = Console(record=True, width=width, height=height, color_system=None)
    console.print(render(state, width=width, height=height))
    return console.export_text()


@pytest.mark.parametrize("width, height", [(80, 24), (160, 50)])
def test_render_fits_and_shows_banner_and_figures(width, height):
    _, state = acquiring_state()
    text = screen(state, width, height)
    lines = text.splitlines()
    assert len(lines) <= height and max(map(len, lines)) <= width
    assert "ACQUIRING" in text and "about 60 more slices needed" in text
    assert "140 slices" in text and "1.8/min" in text and "up 1h02m" in text
    assert "+70.0 px" in text and "-35.0 px" in text  # drift of the last slice
    assert "97.0 %" in text  # quality = 1 - uncertain share
    assert "47.0 %" in text and "+60" in text and "7.2 %" in text  # Table 1 and REV progress
    assert "vol. fraction active" in text and "↑" in text  # the active fraction keeps rising


def test_large_terminal_shows_more_rows_than_small():
    _, state = acquiring_state()
    small, large = screen(state, 80, 24), screen(state, 160, 50)
    assert "inner porosity" in large and "tortuosity pore y-" in large
    # label 0 (cap, margins, drift borders, held slices) is not read as a phase left unlabelled
    assert any("no phase (not sample, held)" in line and "12.0 %" in line for line in large.splitlines())
    assert "unassigned" not in large
    assert "more (larger terminal)" in small or "inner porosity" in small
    assert len(large.splitlines()) > len(small.splitlines())


def test_verdicts_representative_not_stationary_stopped():
    stream, state = acquiring_state()
    feed(stream, state, "rev", {"representative": False, "metrics": REV_METRICS,
                                "not_stationary": ["volume_fraction.active"]})
    assert verdict(state)[0] == "NOT STATIONARY"
    assert "NOT STATIONARY" in screen(state, 80, 24) and "volume_fraction.active" in screen(state, 80, 24)
    rev = {"representative": True, "metrics": REV_METRICS, "not_stationary": []}
    feed(stream, state, "stop", {"reason": "all metrics within tolerance", "depth_slices": 140, "rev": rev})
    text = screen(state, 80, 24)
    assert "REPRESENTATIVE: you can stop" in text and "at 140 slices" in text

    other = MonitorState()
    other.update("stop", EventStream().emit("stop", {"reason": "store failed", "depth_slices": 3, "rev": None}))
    assert verdict(other)[:1] == ("STOPPED",)


def test_agent_lost_after_missed_heartbeats_then_recovers_and_follows_a_restart():
    stream, state = acquiring_state()
    last = state.last_heard_unix_s
    state.tick(last + 3 * 2.0 - 0.1)
    assert verdict(state)[0] == "ACQUIRING"
    state.tick(last + 3 * 2.0 + 0.1)  # three heartbeats (2 s) missed
    assert state.lost and "AGENT LOST" in screen(state, 80, 24)
    # the agent comes back with a new run: the old run's figures go, the new ones come
    restarted = EventStream("run-2")
    beat = restarted.emit("heartbeat", {"uptime_s": 1.0, "state": "waiting", "interval_s": 2.0})
    state.update("heartbeat", beat, received_unix_s=last + 20)
    state.tick(last + 20.5)
    assert not state.lost and state.restarts == 1 and state.run_id == "run-2"
    assert state.metrics is None and not state.drift
    assert verdict(state)[0] == "ACQUIRING"


def test_waiting_for_agent_when_nothing_heard():
    state = MonitorState(endpoint="tcp://10.0.0.5:5556")
    text = screen(state, 80, 24)
    assert "WAITING FOR AGENT" in text and "tcp://10.0.0.5:5556" in text


def test_run_monitor_once_prints_a_snapshot_and_exits():
    stream = EventStream("run-once")
    with Publisher(stream, ANY_PORT, snapshot_endpoint=ANY_PORT, heartbeat_s=3600) as pub:
        acquiring_state(stream)
        console = Console(record=True, width=80, height=24, color_system=None)
        code = run_monitor(pub.endpoint, once=True, snapshot_endpoint=pub.snapshot_endpoint,
                           console=console, timeout_s=10)
    text = console.export_text()
    assert code == 0
    assert "ACQUIRING" in text and "140 slices" in text and "run-once" in text


def test_run_monitor_once_without_agent_says_so():
    console = Console(record=True, width=80, height=24, color_system=None)
    code = run_monitor("tcp://127.0.0.1:1", once=True, snapshot_endpoint="tcp://127.0.0.1:1",
                       console=console, timeout_s=0.3)
    assert code == 2 and "WAITING FOR AGENT" in console.export_text()


def test_run_monitor_live_loop_follows_the_agent():
    stream = EventStream("run-live")
    with Publisher(stream, ANY_PORT, snapshot_endpoint=ANY_PORT, heartbeat_s=0.1) as pub:
        stream.emit("status", {"slices_seen": 7, "slices_processed": 7, "last_index": 7,
                               "drift_px": [1.0, 2.0], "rate_slices_per_s": 0.5})
        console = Console(record=True, width=80, height=24, color_system=None)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (run_monitor(
            pub.endpoint, snapshot_endpoint=pub.snapshot_endpoint, console=console,
            refresh_s=0.05, max_runtime_s=1.0), done.set()))
        worker.start()
        worker.join(60)
    assert done.is_set()
    text = console.export_text()
    assert "ACQUIRING" in text and "7 slices" in text and "run-live" in text


def _wait_for_screen(session, *needles, absent=(), timeout_s=60.0):
    """The tmux pane's text once it shows every needle and none of `absent`."""
    import subprocess
    import time

    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                              text=True).stdout
        if all(n in text for n in needles) and not any(a in text for a in absent):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needles} (without {absent}) never on screen; last screen:\n{text}")


def test_monitor_in_a_real_terminal_loses_and_recovers_the_agent(tmp_path):
    """`revwatch monitor` in tmux: live figures, AGENT LOST when the agent dies, back on restart."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    first = EventStream("run-first")
    pub = Publisher(first, ANY_PORT, snapshot_endpoint=ANY_PORT, heartbeat_s=0.2)
    endpoint, snapshot = pub.endpoint, pub.snapshot_endpoint
    session = f"revwatch-test-{os.getpid()}"
    root = Path(__file__).parents[1]
    # COLUMNS/LINES would pin rich to 80x24 whatever the pane size
    command = (f"cd {root} && env -u COLUMNS -u LINES PYTHONPATH={root} {sys.executable} -c "
               f"'from agent.monitor import run_monitor; "
               f"run_monitor(\"{endpoint}\", snapshot_endpoint=\"{snapshot}\")'")
    try:
        _, _ = acquiring_state(first, slices=12)
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command],
                       check=True)
        live = _wait_for_screen(session, "ACQUIRING", "12 slices", "run-first", "vol. fraction active",
                                "drift dy +6.0 px")
        pub.close()  # the agent dies: heartbeats stop
        lost = _wait_for_screen(session, "AGENT LOST")
        second = EventStream("run-second")
        pub = Publisher(second, endpoint, snapshot_endpoint=snapshot, heartbeat_s=0.2)
        rev = {"representative": True, "metrics": REV_METRICS, "not_stationary": []}
        second.emit("stop", {"reason": "all metrics within tolerance", "depth_slices": 12, "rev": rev})
        back = _wait_for_screen(session, "REPRESENTATIVE: you can stop", "run-second")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        pub.close()
    assert "AGENT LOST" not in back and "run-first" not in back
    print("\n--- live ---\n" + live + "\n--- lost ---\n" + lost + "\n--- restarted ---\n" + back)


@pytest.mark.slow
def test_monitor_in_a_real_terminal_against_the_real_agent(tmp_path, small_fei_project):
    """`revwatch run` on a folder, `revwatch monitor` in tmux; kill -9 the agent, restart it."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    incoming = tmp_path / "incoming"
    shutil.copytree(small_fei_project, incoming)
    from agent.publish import free_loopback_endpoint  # port and port + 1 free: the CLI's snapshot default

    endpoint = free_loopback_endpoint()
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    agent_cmd = [sys.executable, "-m", "agent.cli", "run", str(incoming), "--endpoint", endpoint,
                 "--set", "publish.heartbeat_interval_s=0.5"]
    session = f"revwatch-agent-test-{os.getpid()}"
    agent = subprocess.Popen(agent_cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30",
                        f"cd {root} && env -u COLUMNS -u LINES PYTHONPATH={root} {sys.executable} "
                        f"-m agent.cli monitor {endpoint}"], check=True)
        live = _wait_for_screen(session, "16 slices", "vol. fraction", timeout_s=180)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        lost = _wait_for_screen(session, "AGENT LOST", timeout_s=60)
        agent = subprocess.Popen(agent_cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        back = _wait_for_screen(session, "♥", absent=("AGENT LOST",), timeout_s=180)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        agent.kill()
        agent.wait()
    print("\n--- live ---\n" + live + "\n--- lost ---\n" + lost + "\n--- restarted ---\n" + back)
