"""The report's tables as plain rows, from the run's JSON and CSV files (the template only lays them out)."""

from __future__ import annotations

import json
from collections import defaultdict

from ..rundir import RunDir, eval_file, predictions_file


def eval_for(run: RunDir, split: str) -> tuple[dict | None, str]:
    """``eval_<split>.json`` (the plain evaluation, no TTA/ensemble tag), else the other split's, else None."""
    for s in dict.fromkeys((split, "test", "val")):
        path = run / eval_file(s)
        if path.is_file():
            return json.loads(path.read_text()), s
    return None, split


def operating_rows(evaluation: dict | None) -> list[dict]:
    """Per policy and criterion (and full CVS, and the decision): threshold, and sensitivity,
    specificity, PPV, NPV on the evaluated split with their 95 % CIs; or the reason there is none."""
    if not evaluation or "operating_points" not in evaluation:
        return []
    rows = []
    for policy, p in evaluation["operating_points"]["policies"].items():
        parts = [*p.get("criteria", {}).items(), ("full CVS", p.get("full_cvs") or {}),
                 ("decision", p.get("decision") or {})]
        for name, r in parts:
            ci = r.get("ci95", {})
            rows.append({"policy": policy, "target": p.get("target"), "what": name, "threshold": r.get("threshold"),
                         "reason": r.get("reason") if r.get("sensitivity") is None else None,
                         **{k: (r.get(k), ci.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")}})
    return rows


def time_to_cvs_rows(evaluation: dict | None) -> dict | None:
    t = (evaluation or {}).get("time_to_cvs")
    if not t or t.get("method", "off") == "off":
        return None
    return {"method": t["method"], "rule": t.get("rule_text", ""), "declares": t.get("declares"),
            "reason": t.get("reason"), "summary": t.get("summary", {}), "ci95": t.get("ci95", {}),
            "videos": {str(v["video_id"]): v for v in t.get("videos", [])}}


def per_video_rows(run: RunDir, split: str, evaluation: dict | None, names: tuple[str, ...]) -> list[dict]:
    """One row per video of the split: keyframes, positives and mean probability per criterion (from
    ``predictions_<split>.csv``), its AP when evaluate ran with ``--per-video``, and when CVS was declared."""
    if not (run / predictions_file(split)).is_file():
        return []
    preds = run.read_predictions(split, names)
    acc: dict[str, dict] = defaultdict(lambda: {"n": 0, "pos": [0] * len(names), "prob": [0.0] * len(names)})
    for vid, y, p in zip(preds["video_ids"], preds["labels"], preds["probs"]):
        a = acc[str(vid)]
        a["n"] += 1
        for c in range(len(names)):
            a["pos"][c] += int(round(y[c]))
            a["prob"][c] += p[c]
    ap = {str(v["video_id"]): v for v in ((evaluation or {}).get("per_video") or {}).get("videos", [])}
    ttc = (time_to_cvs_rows(evaluation) or {}).get("videos", {})
    return [{"video": vid, "n": a["n"], "positives": a["pos"], "mean_prob": [s / a["n"] for s in a["prob"]],
             "ap": ap.get(vid, {}).get("ap"), "map": ap.get(vid, {}).get("map"),
             "declared_at_s": ttc.get(vid, {}).get("declared_at_s"),
             "first_full_cvs_label_s": ttc.get(vid, {}).get("first_full_cvs_label_s")}
            for vid, a in sorted(acc.items(), key=lambda kv: (len(kv[0]), kv[0]))]
