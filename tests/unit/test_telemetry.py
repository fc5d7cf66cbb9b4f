"""hdsu_ray.telemetry: a no-op without Ray (nothing heavy imported), and harmless inside Ray.

Each case runs in a fresh interpreter: pytest's own process may already have imported (or
initialised) Ray through other tests, and "nothing imported" can only be checked from scratch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

RECORD = "{'step': 3, 'loss_forget': 1.5, 'loss_retain': 0.25, 'eval_forget_accuracy': 0.5}"


def run_python(code: str, timeout: float = 60) -> str:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # never attach to a cluster someone else started
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_no_op_without_ray_and_imports_nothing_heavy():
    out = run_python(f"""
        import sys
        from hdsu_ray import telemetry
        from hdsu_ray.logs import Timings
        telemetry.stage_started("smoke", "learn")
        telemetry.stage_finished("smoke", "learn", 1.0)
        telemetry.unlearn_step("smoke", "ga", 0, {RECORD})
        t = Timings(workflow="smoke")
        with t.stage("learn"):
            pass
        assert dict(t).keys() == {{"learn"}}, dict(t)
        heavy = sorted(m for m in ("ray", "torch", "numpy", "transformers") if m in sys.modules)
        assert not heavy, heavy
        assert telemetry._metrics == {{}} and telemetry._keeper is None and not telemetry._disabled
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_no_op_when_ray_is_imported_but_not_initialised():
    run_python(f"""
        import ray
        from hdsu_ray import telemetry
        telemetry.unlearn_step("smoke", "ga", 0, {RECORD})
        telemetry.stage_started("smoke", "learn")
        assert telemetry._metrics == {{}} and not telemetry._disabled
    """)


def test_timings_still_report_a_failed_stage():
    run_python("""
        from hdsu_ray.logs import Timings
        t = Timings(workflow="smoke")
        try:
            with t.stage("learn"):
                raise KeyError("boom")
        except KeyError:
            pass
        assert dict(t) == {}
        t2 = Timings()  # the old signature still works
        with t2.stage("x", None):
            pass
        assert list(t2) == ["x"]
    """)


def test_metrics_record_inside_a_local_ray_and_bad_values_never_raise():
    out = run_python(f"""
        import ray
        from hdsu_ray import telemetry
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            telemetry.stage_started("smoke", "learn")
            telemetry.stage_finished("smoke", "learn", 2.5)
            telemetry.unlearn_step("smoke", "ga", 0, {RECORD})
            assert not telemetry._disabled
            assert set(telemetry._metrics) == set(telemetry.METRICS), sorted(telemetry._metrics)
            # Every gauge series is kept for the refresher thread (the counter is not a gauge):
            # stage running + seconds, step, two losses, one accuracy.
            assert len(telemetry._live) == 6, sorted(telemetry._live)
            assert telemetry._keeper.is_alive()
            telemetry._refresh()
            # A value Ray (or float()) rejects is swallowed and switches telemetry off, once.
            telemetry.unlearn_step("smoke", "ga", 0, {{"step": 4, "loss_forget": "not a number"}})
            assert telemetry._disabled
            telemetry.unlearn_step("smoke", "ga", 0, {RECORD})  # now a no-op
        finally:
            ray.shutdown()
        print("ok")
    """, timeout=90)
    assert out.strip().endswith("ok")
