"""``revwatch monitor``: the live terminal dashboard of a running agent.

Three parts, kept apart so that each can be tested alone:

- :class:`MonitorState`: plain data, updated from protocol documents
  (``state.update(topic, doc)``), and told the time (``state.tick(now)``);
- :func:`render`: a pure function of the state, returning a rich renderable
  sized for the terminal (fits 80x24, uses a larger one);
- :func:`run_monitor`: the loop (ZeroMQ subscription, rich ``Live`` full screen),
  which only updates the state and redraws.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.client import DEFAULT_ENDPOINT, Subscription, get_snapshot, snapshot_documents

__all__ = ["MonitorState", "render", "verdict", "run_monitor"]

logger = logging.getLogger(__name__)

HISTORY = 2000  # slices of drift / quality kept for the traces
LOST_AFTER_BEATS = 3  # heartbeats missed before AGENT LOST
_DEFAULT_BEAT_S = 2.0
_TREND_WINDOW = 5  # metrics updates compared for the trend arrow
_TREND_REL = 0.002  # relative change below which a metric is "steady"
_COMMON = frozenset({"protocol", "topic", "run_id", "seq", "time_unix_s"})
_SPARK = "▁▂▃▄▅▆▇█"

_LABELS = {
    "volume_fraction": "vol. fraction",
    "tortuosity_geometric": "tortuosity",
    "local_thickness_um": "thickness µm",
    "connected_share": "connected",
    "interconnected_share": "interconnected",
    "surface_area_per_cell_volume_um-1": "area/cell µm⁻¹",
    "surface_area_per_phase_volume_um-1": "area/phase µm⁻¹",
    "coverage_share": "coverage",
    "inner_porosity_share": "inner porosity",
    # label 0 is the cap, margins, fields outside the sample, drift borders and held slices: not a
    # failure to label, which "unassigned" read as a phase fraction suggests
    "volume_fraction.unassigned": "no phase (not sample, held)",
}


def _flatten(doc: dict) -> dict[str, float | None]:
    """Numbers of a metrics document by dotted name (``volume_fraction.pore``)."""
    out: dict[str, float | None] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[prefix] = value

    for key, value in doc.items():
        if key not in _COMMON and key not in ("depth_slices", "spacing_um", "sampling_error"):
            walk(key, value)
    return out


def _is_share(name: str) -> bool:
    head = name.split(".", 1)[0]
    return head == "volume_fraction" or head.endswith("_share")


def _label(name: str) -> str:
    if name in _LABELS:
        return _LABELS[name]
    head, _, rest = name.partition(".")
    return " ".join(filter(None, [_LABELS.get(head, head), rest.replace(".", " ")]))


def _fmt(name: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if _is_share(name):
        return f"{100 * value:.1f} %"
    return f"{value:.3g}"


@dataclass
class MonitorState:
    """What the dashboard knows, updated from documents; no I/O, no clock of its own.

    Attributes are public and plain so that tests can build states directly.
    """

    endpoint: str | None = None
    run_id: str | None = None
    status: dict | None = None
    metrics: dict | None = None
    rev: dict | None = None
    stop: dict | None = None
    heartbeat: dict | None = None
    errors: deque = field(default_factory=lambda: deque(maxlen=20))
    error_count: int = 0
    drift: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (index, dy, dx)
    quality: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # 0..1 per slice
    metric_history: dict = field(default_factory=dict)  # name -> deque of values
    last_heard_unix_s: float | None = None
    now_unix_s: float | None = None
    restarts: int = 0

    def update(self, topic: str, doc: dict, *, received_unix_s: float | None = None) -> None:
        """Take one document into account (as published: common fields included).

        A document of another ``run_id`` means the agent restarted: the state of
        the previous run is dropped.
        """
        run = doc.get("run_id")
        if run and self.run_id and run != self.run_id:
            self._reset()
            self.restarts += 1
        self.run_id = run or self.run_id
        self.last_heard_unix_s = received_unix_s or doc.get("time_unix_s") or self.last_heard_unix_s
        if topic == "status":
            self._update_status(doc)
        elif topic == "metrics":
            self.metrics = doc
            for name, value in _flatten(doc).items():
                if value is not None and math.isfinite(value):
                    self.metric_history.setdefault(name, deque(maxlen=_TREND_WINDOW)).append(value)
        elif topic == "rev":
            self.rev = doc
        elif topic == "stop":
            self.stop = self.stop or doc
        elif topic == "error":
            self.errors.append(doc)
            self.error_count += 1
        elif topic == "heartbeat":
            self.heartbeat = doc

    def _update_status(self, doc: dict) -> None:
        previous = self.status
        self.status = doc
        index = doc.get("last_index")
        new_slice = index is not None and (previous is None or previous.get("last_index") != index)
        if not new_slice:
            return
        drift = doc.get("drift_px")
        if drift and None not in drift:
            self.drift.append((index, float(drift[0]), float(drift[1])))
        quality = doc.get("quality")
        if quality is None and doc.get("uncertain_share") is not None:
            quality = 1.0 - doc["uncertain_share"]
        if quality is not None:
            self.quality.append(float(quality))

    def _reset(self) -> None:
        fresh = MonitorState(endpoint=self.endpoint)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "restarts"})

    def tick(self, now_unix_s: float) -> None:
        """Tell the state the time (for heartbeat ages and AGENT LOST)."""
        self.now_unix_s = now_unix_s

    # -- derived -------------------------------------------------------------
    @property
    def beat_interval_s(self) -> float:
        return float((self.heartbeat or {}).get("interval_s") or _DEFAULT_BEAT_S)

    @property
    def silence_s(self) -> float | None:
        """Seconds since the agent was last heard (None: unknown)."""
        if self.now_unix_s is None or self.last_heard_unix_s is None:
            return None
        return max(0.0, self.now_unix_s - self.last_heard_unix_s)

    @property
    def lost(self) -> bool:
        silence = self.silence_s
        return silence is not None and silence > LOST_AFTER_BEATS * self.beat_interval_s

    def trend(self, name: str) -> int:
        """-1, 0 or +1: the direction of metric `name` over the last updates."""
        values = self.metric_history.get(name)
        if not values or len(values) < 2:
            return 0
        first, last = values[0], values[-1]
        scale = max(abs(first), abs(last), 1e-12)
        change = (last - first) / scale
        return 0 if abs(change) < _TREND_REL else (1 if change > 0 else -1)


# -- rendering ---------------------------------------------------------------

def verdict(state: MonitorState) -> tuple[str, str, str]:
    """``(title, style, detail)`` of the banner: the one thing the user must see."""
    rev, stop = state.rev or {}, state.stop
    if state.run_id is None:
        where = f" at {state.endpoint}" if state.endpoint else ""
        return "WAITING FOR AGENT", "bold black on yellow", f"nothing heard yet{where}"
    if state.lost:
        return ("AGENT LOST", "bold white on red",
                f"no heartbeat for {state.silence_s:.0f} s (expected every {state.beat_interval_s:g} s)")
    if stop is not None:
        stop_rev = stop.get("rev") or {}
        if stop_rev.get("representative"):
            return ("REPRESENTATIVE: you can stop", "bold black on green",
                    f"at {stop.get('depth_slices')} slices: {stop.get('reason', '')}")
        return "STOPPED", "bold white on magenta", str(stop.get("reason", ""))
    drifting = rev.get("not_stationary")
    if drifting:
        names = ", ".join(drifting) if isinstance(drifting, list) else "trend along z"
        return ("NOT STATIONARY", "bold white on red",
                f"{names}: statistics change with depth; this volume is not representative")
    if rev.get("representative"):
        return ("REPRESENTATIVE: you can stop", "bold black on green",
                f"at {rev.get('depth_slices')} slices")
    needed = rev.get("slices_needed")
    if needed is None:
        per_metric = [m.get("slices_needed") for m in (rev.get("metrics") or {}).values()
                      if not m.get("converged") and m.get("slices_needed") is not None]
        needed = max(per_metric, default=None)
    detail = f"about {needed:,} more slices needed" if needed else "REV not reached yet"
    span = rev.get("slices_needed_range")
    if needed and span and span[0] != span[1]:
        detail += f" (range {span[0]:,}-{span[1]:,})"
    seconds = rev.get("seconds_needed")
    if needed and seconds is not None:
        detail += f" (~{_duration(seconds)} at the current slice rate)"
    horizon = rev.get("horizon_slices")
    if horizon is not None and rev.get("horizon_source") == "planned depth":
        detail += f", horizon {horizon:,} slices"
    return "ACQUIRING", "bold white on blue", detail


def _banner(state: MonitorState, width: int, *, tall: bool = False) -> Panel:
    """Full-width panel in the verdict's colour: 4 lines, 6 on a tall terminal."""
    title, style, detail = verdict(state)
    text = Text(justify="center", no_wrap=True, overflow="ellipsis")
    text.append(title, style=style)
    text.append("\n" + detail)
    return Panel(text, style=style, box=box.HEAVY, width=width, padding=(1 if tall else 0, 1))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _header(state: MonitorState, width: int) -> Table:
    st, hb = state.status or {}, state.heartbeat or {}
    grid = Table.grid()
    grid.add_column(no_wrap=True, overflow="ellipsis", max_width=width)
    rate = st.get("rate_slices_per_s")
    skipped = f", {st['slices_skipped']} skipped" if st.get("slices_skipped") else ""
    silence = state.silence_s
    if silence is None:
        health = "[dim]♥ –[/]"
    elif state.lost:
        health = f"[bold red]♥ silent {silence:.0f} s[/]"
    else:
        health = f"[green]♥ {silence:.1f} s[/]"
    n = state.error_count
    errors = f"  [red]{n} error{'s' if n != 1 else ''}[/]" if n else ""
    first = (f"[bold]{st.get('slices_processed', 0)}[/] slices ({st.get('slices_seen', 0)} seen{skipped})"
             f"  {f'{60 * rate:.1f}' if rate else '–'}/min  up {_duration(hb.get('uptime_s'))}"
             f"  {health}{errors}  {st.get('state') or hb.get('state') or ''}")
    grid.add_row(first)
    grid.add_row(f"[dim]run[/] {state.run_id or '–'}  [dim]folder[/] {st.get('folder', '–')}  "
                 f"[dim]volume[/] {st.get('volume', '–')}")
    pictures = st.get("pictures")
    if pictures:
        folders = {str(Path(p).parent) for p in pictures.values()}
        where = folders.pop() if len(folders) == 1 else ""
        names = ", ".join(f"{Path(p).name}" if where else p for p in pictures.values())
        grid.add_row(f"[dim]pictures[/] {where + ': ' if where else ''}{names}")
    return grid


def _chart(values, width: int, rows: int = 1, *, lo=None, hi=None) -> list[str]:
    """Block chart of the last `width` values, `rows` characters tall (top row first).

    The scale spans the values shown unless `lo` / `hi` fix it.
    """
    values = list(values)[-width:]
    if not values:
        return [""] * rows
    lo = min(values) if lo is None else min(lo, *values)
    hi = max(values) if hi is None else max(hi, *values)
    span = hi - lo
    eighths = [rows * 8 if span == 0 else max(1, round((v - lo) / span * rows * 8)) for v in values]
    lines = []
    for r in range(rows - 1, -1, -1):
        cells = []
        for e in eighths:
            level = e - 8 * r
            cells.append("█" if level >= 8 else (_SPARK[level - 1] if level > 0 else " "))
        lines.append("".join(cells))
    return lines


def _traces(state: MonitorState, width: int, rows: int) -> Table:
    """Drift (dy, dx) and per-slice quality; one line each, or `rows`-tall charts side by side."""
    st = state.status or {}
    if not state.drift and not state.quality:
        return Text("drift and quality: no slice yet", "dim")
    conf = st.get("drift_confidence")
    dy = dx = None
    if state.drift:
        _, dy, dx = state.drift[-1]
    q = state.quality[-1] if state.quality else None
    q_style = "red" if q is None or q < 0.85 else ("yellow" if q < 0.95 else "green")
    # quality on a fixed scale up to 100 %, so that a steady 97 % looks steady
    items = [
        (f"drift dy {dy:+.1f} px" + (f" (conf. {conf:.2f})" if conf is not None else "")
         if dy is not None else "drift dy –", [d[1] for d in state.drift], "cyan", {}),
        (f"drift dx {dx:+.1f} px" if dx is not None else "drift dx –", [d[2] for d in state.drift],
         "magenta", {}),
        (f"quality {100 * q:.1f} % (min {100 * min(state.quality):.0f} %)" if q is not None else "quality –",
         list(state.quality), q_style, {"lo": 0.8, "hi": 1.0}),
    ]
    grid = Table.grid(padding=(0, 2), expand=True)
    if rows <= 1:
        label_w = 30
        grid.add_column(no_wrap=True, width=label_w, overflow="ellipsis")
        grid.add_column(no_wrap=True)
        for label, values, style, scale in items:
            grid.add_row(label, Text(_chart(values, max(8, width - label_w - 2), **scale)[0], style))
        return grid
    col_w = (width - 4) // 3
    for _ in items:
        grid.add_column(no_wrap=True, width=col_w)
    grid.add_row(*(Text(label, "bold", no_wrap=True, overflow="ellipsis") for label, *_ in items))
    grid.add_row(*(Text("\n".join(_chart(values, col_w, rows, **scale)), style)
                   for _, values, style, scale in items))
    return grid


def _bar(progress: float, width: int) -> Text:
    filled = int(round(max(0.0, min(1.0, progress)) * width))
    done = progress >= 1
    return Text("█" * filled + "░" * (width - filled), "green" if done else "yellow")


def _rows(state: MonitorState) -> list[tuple[str, object, dict | None]]:
    """(name, value, rev entry) rows: the metrics the REV follows first, then the rest."""
    values = _flatten(state.metrics) if state.metrics else {}
    rev_metrics = (state.rev or {}).get("metrics") or {}
    rows = [(name, values.get(name, entry.get("value")), entry) for name, entry in rev_metrics.items()]
    rows += [(name, value, None) for name, value in values.items() if name not in rev_metrics]
    return rows


def _table(state: MonitorState, width: int, max_rows: int) -> Table:
    rev = state.rev or {}
    tol = rev.get("tolerance")
    depth = (state.metrics or {}).get("depth_slices") or rev.get("depth_slices")
    title = f"Table 1 at {depth} slices" if depth is not None else "Table 1"
    if tol:
        title += f" · REV tolerance {100 * tol:g} %"
    bar_w = 10 if width < 120 else 20
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, expand=True,
                  padding=(0, 1), pad_edge=False, show_edge=False)
    table.add_column("metric", no_wrap=True, overflow="ellipsis", ratio=3)
    table.add_column("value", justify="right", no_wrap=True, min_width=8)
    table.add_column("", width=1, no_wrap=True)
    table.add_column("REV", no_wrap=True, width=bar_w)
    table.add_column("error", justify="right", no_wrap=True, min_width=6)
    table.add_column("need", justify="right", no_wrap=True, min_width=5)
    rows = _rows(state)
    shown = rows if len(rows) <= max_rows else rows[: max(0, max_rows - 1)]
    for name, value, entry in shown:
        arrow = {1: Text("↑", "yellow"), -1: Text("↓", "yellow"), 0: Text("→", "green")}[state.trend(name)]
        if entry is None:
            table.add_row(_label(name), _fmt(name, value), arrow, "", "", "")
            continue
        err = entry.get("relative_error")
        metric_tol = entry.get("tolerance") or tol
        converged = bool(entry.get("converged"))
        progress = 1.0 if converged else (min(1.0, metric_tol / err) if err and metric_tol else 0.0)
        need = entry.get("slices_needed")
        table.add_row(
            Text(_label(name), "bold"),
            _fmt(name, value),
            arrow,
            _bar(progress, bar_w),
            Text(f"{100 * err:.1f} %" if err is not None else "–", "green" if converged else ""),
            Text("✓", "bold green") if converged else Text("?" if need is None else f"+{need:,}"),
        )
    if len(shown) < len(rows):
        table.add_row(Text(f"… {len(rows) - len(shown)} more (larger terminal)", "dim"), "", "", "", "", "")
    if not rows:
        table.add_row(Text("no metrics yet", "dim"), "", "", "", "", "")
    return table


def _notes(state: MonitorState, width: int, lines: int, *, wrap: bool = False) -> Group:
    """Why not representative yet, and the latest errors (most recent first)."""
    notes = [("· " + r, "yellow") for r in ((state.rev or {}).get("reasons") or [])]
    notes += [(f"! {e.get('kind', 'error')}: {e.get('message', '')}", "red") for e in reversed(state.errors)]
    return Group(*(Text(t, style, no_wrap=not wrap, overflow="ellipsis") for t, style in notes[:lines]))


def render(state: MonitorState, *, width: int | None = None, height: int | None = None):
    """The dashboard for `state`, sized for a ``width`` x ``height`` terminal.

    Parameters
    ----------
    state : MonitorState
    width, height : int, optional
        Terminal size in characters; default 80 x 24.

    Returns
    -------
    rich renderable
        Banner (verdict), header (run, slices, rate, time, heartbeat), drift and
        quality traces, Table 1 with trends and REV progress, reasons and errors.
    """
    width = max(40, width or 80)
    height = max(16, height or 24)
    wide, tall = width >= 120, height >= 36
    chart_rows = (4 if tall else 2) if wide else 1
    parts = [_banner(state, width, tall=tall), _header(state, width), Text("")]
    used = (6 if tall else 4) + 2 + 1 + (1 if (state.status or {}).get("pictures") else 0)
    parts.append(_traces(state, width, chart_rows))
    used += 3 if chart_rows == 1 else chart_rows + 1
    spare_for_table = 4  # title, column header, rule, last line kept free
    if not wide:
        notes = 2 if tall else 1
        parts += [_table(state, width, height - used - notes - spare_for_table), _notes(state, width, notes)]
        return Group(*parts)
    right_w = max(40, width // 3)
    body = Table.grid(expand=True, padding=(0, 1))
    body.add_column(ratio=1)
    body.add_column(width=right_w)
    body.add_row(_table(state, width - right_w - 1, height - used - spare_for_table - 1),
                 Group(Text("why not yet / errors", "bold"),
                       _notes(state, right_w, (height - used - 2) // 2, wrap=True)))
    parts += [Text(""), body]
    return Group(*parts)


# -- the loop ----------------------------------------------------------------

def run_monitor(endpoint: str = DEFAULT_ENDPOINT, *, once: bool = False, timeout_s: float = 10.0,
                keys_dir=None, snapshot_endpoint: str | None = None,
                console: Console | None = None, refresh_s: float = 0.25,
                max_runtime_s: float | None = None) -> int:
    """Show the dashboard of the agent publishing on `endpoint` until Ctrl-C.

    Parameters
    ----------
    endpoint : str
        The agent's PUB endpoint (its snapshot socket is port + 1 unless
        `snapshot_endpoint` is given).
    once : bool
        Print one dashboard from a snapshot and return (for scripts and logs).
    timeout_s : float
        With `once`: how long to wait for the agent's snapshot.
    keys_dir : str or os.PathLike, optional
        CURVE key folder (``revwatch keys``), for an agent on another machine.
    console : rich.console.Console, optional
        Where to draw; default the terminal.
    refresh_s : float
        Redraw interval (the agent's documents are taken as they come).
    max_runtime_s : float, optional
        Return after this long (tests, unattended screens); default: until Ctrl-C.

    Returns
    -------
    int
        Exit status: 0, or 2 when `once` found no agent.
    """
    console = console or Console()
    state = MonitorState(endpoint=endpoint)
    if once:
        try:
            snap = get_snapshot(endpoint, snapshot_endpoint=snapshot_endpoint, timeout_s=timeout_s,
                                history=True, curve=keys_dir)
        except TimeoutError as exc:
            console.print(render(state, width=console.width, height=console.height))
            console.print(f"[red]{exc}[/]")
            return 2
        now = time.time()
        for doc in snapshot_documents(snap):
            state.update(doc["topic"], doc, received_unix_s=now)  # the reply proves it is alive
        state.tick(now)
        console.print(render(state, width=console.width, height=console.height))
        return 0

    from rich.live import Live

    deadline = None if max_runtime_s is None else time.monotonic() + max_runtime_s
    with Subscription(endpoint, snapshot_endpoint=snapshot_endpoint, curve=keys_dir, history=True) as sub, \
            Live(render(state), console=console, screen=console.is_terminal, auto_refresh=False,
                 transient=False) as live:  # full screen on a terminal; a pipe gets the last frame
        try:
            while deadline is None or time.monotonic() < deadline:
                for topic, doc in sub.receive(refresh_s):
                    state.update(topic, doc, received_unix_s=time.time())
                state.tick(time.time())
                live.update(render(state, width=console.width, height=console.height), refresh=True)
        except KeyboardInterrupt:
            pass
    return 0
