"""Try the sandbox once at start, in a child, before any actor depends on it.

The child applies exactly what an actor applies, then checks that it holds:
the data folder cannot be listed, the supervisor cannot be signalled. A part
the kernel claims but that does not apply, or a policy that does not hold,
stops the server at start (exit code 2) instead of failing every actor later.
"""

from __future__ import annotations

import os
import shutil

from navi_actor import sandbox
from navi_actor.sandbox import policy

PROBE_SESSION = ".probe"  # never a session id (those are hex), so never a real session's folder


def _in_child(plan: policy.Plan, parent: int) -> str:
    sandbox.no_new_privs()
    policy.enter(plan)
    policy.confine_session(plan, PROBE_SESSION)
    failures = []
    if plan.parts.get("files"):
        try:
            os.listdir(plan.data_dir)
            failures.append(f"the data folder {plan.data_dir} could still be listed")
        except PermissionError:
            pass
    if plan.parts.get("signals"):
        try:
            os.kill(parent, 0)
            failures.append("the supervisor could still be signalled")
        except PermissionError:
            pass
    if failures:
        raise RuntimeError("; ".join(failures))
    return "ok"


def probe(plan: policy.Plan) -> None:
    """Raise :class:`policy.SandboxConfigError` if the plan cannot be applied or does not hold."""
    parent = os.getpid()
    try:
        sandbox.check_in_child(lambda: _in_child(plan, parent))
    except RuntimeError as exc:
        raise policy.SandboxConfigError(f"the sandbox could not be applied ({exc}); "
                                        "--sandbox off runs agents unconfined") from None
    finally:
        shutil.rmtree(os.path.join(plan.uploads_root, PROBE_SESSION), ignore_errors=True)
