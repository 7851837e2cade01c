"""Benchmark: distillation and int8 targets, measured in one run on the same held-out users.

    python benchmarks/distillation.py [--config configs/distill/demo.yaml]   (after `make demo-data`)

Runs the whole pipeline into a scratch registry (the demo registry is untouched) and prints one JSON line per
target with the measured ratio: student/teacher NDCG@10, teacher/student parameters, int8/fp32 file size,
int8 NDCG@10 loss, int8 speed-up at batch 256 on one thread, teacher − hard-label student NDCG@10 with a 95 %
bootstrap interval over the held-out users (paired: both models rank for the same users) and a paired t-test.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from rayml.config import load_config
from rayml.models.distill import run_distillation
from rayml.models.distill_config import DistillConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/distill/demo.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rayml-bench-") as tmp:
        config = load_config(args.config, DistillConfig, {
            "registry": f"{tmp}/registry", "storage_path": f"{tmp}/train", "run_name": "bench", "baseline": True,
        })
        report = run_distillation(config)
    rows = {r.name: r for r in report.rows}
    teacher, hard = rows["teacher"], rows["student, hard labels only"]
    fp32, int8 = rows["student fp32 (distilled)"], rows["student int8 (distilled)"]
    print(report.table())
    for name, value, target in [
        ("student_ndcg_over_teacher", fp32.ndcg10 / teacher.ndcg10, ">= 0.97"),
        ("teacher_params_over_student", teacher.params / fp32.params, ">= 10"),
        ("int8_file_over_fp32", int8.file_kb / fp32.file_kb, "<= 0.30"),
        ("int8_ndcg_loss", (fp32.ndcg10 - int8.ndcg10) / fp32.ndcg10, "<= 0.01"),
        ("int8_speedup_batch256", fp32.latency_b256_us / int8.latency_b256_us, ">= 2"),
        ("teacher_minus_hard_student_ndcg", teacher.ndcg10 - hard.ndcg10, "> 0, measurably"),
        ("distilled_minus_hard_student_ndcg", fp32.ndcg10 - hard.ndcg10, "(report)"),
    ]:
        print(json.dumps({"benchmark": "distillation", "measure": name, "value": round(value, 4), "target": target}))
    gap = report.teacher_minus_hard
    if gap is not None:
        print(json.dumps({"benchmark": "distillation", "measure": "teacher_minus_hard_student_ndcg_paired",
                          "value": round(gap.mean, 4), "ci95": [round(gap.low, 4), round(gap.high, 4)],
                          "p_value": float(f"{gap.p_value:.3g}"), "users": gap.users, "target": "ci95 above 0"}))


if __name__ == "__main__":
    main()
