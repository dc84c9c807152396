"""The benchmark's results as Markdown tables."""
from __future__ import annotations

__all__ = ["to_markdown"]

GiB = 2**30


def _num(x, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _gib(x) -> str:
    if x is None:
        return "-"
    return f"{x / GiB:.2f}" if x >= GiB / 100 else f"{x / GiB:.1e}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def to_markdown(result: dict, command: str | None = None) -> str:
    """Markdown of a ``run_benchmark`` result: machine, targets, per-task tables, scaling."""
    cfg, machine = result["config"], result["machine"]
    lines = ["## Results", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        f"Machine: {machine.get('cpus')} CPUs, {machine.get('memory_gib', '?')} GiB, {machine['platform']}, "
        f"torch {machine['torch']}, {cfg['threads']} threads, device {cfg['device']}"
        + (f" ({machine['gpu']})" if machine.get("gpu") else "")
        + f"; load average at the end {machine.get('load_average_at_end', '?')}. "
        f"Batch {cfg['batch']}, {len(cfg['cardinalities'])} one-hot features, D={cfg['dim']}, threshold "
        f"{cfg['threshold']}, {cfg['collisions']} collisions, sparse SGD (the *adagrad variants: the optimizers "
        f"of `compembed train`); {cfg['rounds']} interleaved rounds x "
        f"{cfg['steps']} steps per variant (median, min-max over rounds); run took {result['elapsed_s']:.0f}s.",
        "",
    ]
    lines += ["### Targets", ""]
    lines += _table(["target", "measured", "goal", "met"], [
        [t["target"], "-" if t["value"] is None else f"{t['value']:.3f}",
         "-" if t["goal"] is None else ("<= " if not t.get("higher", True) else ">= ") + f"{t['goal']:g}",
         "-" if t["goal"] is None else {True: "yes", False: "**no**", None: "not run"}[t["met"]]]
        for t in result["targets"]
    ])
    lines.append("")
    titles = {"emb": "Embedding part alone (lookup + backward + optimizer step)",
              "dlrm": "Whole DLRM training step"}
    for task, data in result["tasks"].items():
        lines += [f"### {titles.get(task, task)}", ""]
        extra = ""
        if data.get("sgemm_gflops"):
            extra = f"sgemm (2048x1024x1024) in the same run: {data['sgemm_gflops']:.1f} GFLOP/s"
            if data.get("flop_per_sample"):
                roof = data["sgemm_gflops"] * 1e9 / data["flop_per_sample"]
                extra += (f"; MLP FLOPs {data['flop_per_sample'] / 1e6:.2f} MFLOP/sample (fwd+bwd), so the FLOP "
                          f"roofline is {roof:,.0f} samples/s")
            if data.get("idle_rss"):
                extra += f"; an idle worker (interpreter, torch, models imported) has a peak RSS of {_gib(data['idle_rss'])} GiB"
            lines += [extra + f". Best full-table baseline: {data.get('best_full')}.", ""]
        header = ["variant", "samples/s (median)", "min-max", "vs full-per-feature", "vs full-batched",
                  "vs best full", "vs qr-reference", "peak RSS GiB", "RSS vs best full", "tables GiB"]
        with_reference = any(v.get("speed_vs_ref-dlrm-full") for v in data["variants"].values())
        if with_reference:
            header.insert(6, "vs ref-dlrm-full")
        if task == "dlrm":
            header += ["GFLOP/s", "roofline"]
        rows = []
        for name, v in data["variants"].items():
            if v.get("median") is None:
                rows.append([name, f"skipped: {v.get('skipped')}"] + ["-"] * (len(header) - 2))
                continue
            row = [name, _num(v["median"]), f"{_num(v['min'])}-{_num(v['max'])}",
                   _ratio(v.get("speed_vs_full-per-feature")), _ratio(v.get("speed_vs_full-batched")),
                   _ratio(v.get("speed_vs_best_full")), _ratio(v.get("speed_vs_qr-reference")),
                   _gib(v.get("peak_rss")), _ratio(v.get("rss_vs_best_full")), _gib(v.get("embedding_bytes"))]
            if with_reference:
                row.insert(6, _ratio(v.get("speed_vs_ref-dlrm-full")))
            if task == "dlrm":
                row += [_num(v.get("gflops"), ".1f"), _num(v.get("roofline_fraction"), ".0%")]
            rows.append(row)
        lines += _table(header, rows) + [""]
        if with_reference:
            lines += ["- `ref-dlrm-*`: the reference DLRM script (facebookresearch/dlrm `dlrm_s_pytorch.py`) run as a "
                      "program once per round on random one-hot data with the same sizes, MLPs, batch, SGD and "
                      "threads; timed by its own `--print-time` clock per iteration (forward to optimizer step: "
                      "its data generation and start-up excluded), the first warm-up iterations of each run "
                      "dropped. Its peak RSS includes its start-up (float64 table initialisation).", ""]
        fast = [(name, v) for name, v in data["variants"].items() if v.get("speed_vs_torch_optim")]
        if fast:
            lines += [f"- `{name}` vs `{v['torch_reference']}` (the same model, its tables on torch.optim): "
                      f"{_ratio(v['speed_vs_torch_optim'])}" for name, v in fast] + [""]
    for name, reason in result.get("skipped", {}).items():
        lines += [f"- `{name}` skipped: {reason}"]
    if result.get("skipped"):
        lines.append("")
    check = result.get("offset_check")
    if check and check.get("cost") is not None:
        lines += ["### Offsets check (embedding part on multi-hot bags)", "",
                  f"`{check['variant']}` on bags of {check['bag_length']} ids on average: {_num(check['checked'])} "
                  f"samples/s with the check, {_num(check['unchecked'])} without (step {check['step_s'] * 1e3:.1f} ms). "
                  f"The check alone takes {check['check_s'] * 1e3:.3f} ms per batch: {check['cost']:.3%} of the step "
                  f"(step time with / without it over interleaved rounds, noise included: {check['ab_cost']:+.2%}).", ""]
    elif check:
        lines += [f"- offsets check skipped: {check.get('skipped')}", ""]
    if result.get("scaling"):
        lines += ["### Scaling (embedding part, %d tables of n rows each)" % cfg["scaling_features"], ""]
        rows = []
        for r in result["scaling"]:
            rows.append([f"{r['cardinality']:.0e}", r["scheme"], _gib(r["table_bytes"]), _gib(r["full_bytes"]),
                         "yes" if r["fits"] else "**no**",
                         _num(r.get("samples_per_s")) if r.get("measured") else "-",
                         _num(r.get("step_ms"), ".1f") if r.get("measured") else "-",
                         _gib(r.get("peak_rss")) if r.get("measured") else "-",
                         r.get("note") or ""])
        lines += _table(["n per table", "scheme", "tables GiB", "full GiB", f"fits {cfg['fit_limit_gib']:g} GiB",
                         "samples/s", "step ms", "peak RSS GiB", "note"], rows) + [""]
    return "\n".join(lines)
