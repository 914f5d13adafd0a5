"""A caller written in another language: runs a Python workflow that calls compute-worker's
activities by name on the worker's task queue, optionally waits for the callback signal, and
prints one JSON result per call.

Usage: call_activities.py ADDRESS TASK_QUEUE CALLS_JSON
CALLS_JSON is a list of {"activity": NAME, "input": ANY, "waitSignal": bool,
"startToCloseSeconds": int (default 60), "build": {...}?, "encoding": STR?, "messageType": STR?}.

Hostile inputs too large for a command line are built inside the workflow from "build":
{"kind": "deep", "levels": N} nests {"a": ...} N levels deep around "input"; {"kind": "pad",
"bytes": N} adds a string field of N bytes to "input"; {"kind": "items", "count": N} adds an
array of N numbers. "encoding" sends the input as a raw payload with that encoding (such as
"json/protobuf", as Go and Java send proto messages, with "messageType" as its message, by default
compute.v1.ComputeRequest), passed through unchanged.
"""

import asyncio
import json
import os
import sys
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

@workflow.defn(name="PythonComputeCaller")
class PythonComputeCaller:
    def __init__(self) -> None:
        self.signals: list = []

    def _record(self, name: str, callback: dict) -> None:
        self.signals.append({"signal": name, "callback": callback})

    @workflow.signal(name="compute-provisioned")
    def compute_provisioned(self, callback: dict) -> None:
        self._record("compute-provisioned", callback)

    @workflow.signal(name="compute-updated")
    def compute_updated(self, callback: dict) -> None:
        self._record("compute-updated", callback)

    @workflow.signal(name="compute-deleted")
    def compute_deleted(self, callback: dict) -> None:
        self._record("compute-deleted", callback)

    @workflow.signal(name="compute-failed")
    def compute_failed(self, callback: dict) -> None:
        self._record("compute-failed", callback)

    @workflow.run
    async def run(self, call: dict) -> dict:
        arg = build_input(call)
        try:
            result = await workflow.execute_activity(
                call["activity"],
                arg,
                task_queue=call["taskQueue"],
                start_to_close_timeout=timedelta(seconds=call.get("startToCloseSeconds", 60)),
                # Generous on purpose: a refused input must stop after one attempt by itself.
                retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(milliseconds=200)),
                            )
        except ActivityError as err:
            cause = err.cause
            out = {"error": {"message": getattr(cause, "message", str(cause)), "retryState": str(err.retry_state)}}
            if isinstance(cause, ApplicationError):
                out["error"].update(
                    {"type": cause.type, "nonRetryable": cause.non_retryable,
                     "details": list(cause.details)}
                )
            return out
        if call.get("waitSignal"):
            await workflow.wait_condition(lambda: len(self.signals) > 0, timeout=timedelta(seconds=60))
        return {"result": result, "signals": self.signals}


def build_input(call: dict):
    value = call.get("input")
    build = call.get("build")
    if build:
        kind = build["kind"]
        if kind == "deep":
            # Built in a loop: json.dumps handles a few hundred levels, not our limit of 32.
            for _ in range(build["levels"]):
                value = {"a": value}
        elif kind == "pad":
            value = dict(value, pad="x" * build["bytes"])
        elif kind == "items":
            value = dict(value, items=list(range(build["count"])))
    encoding = call.get("encoding")
    if encoding:
        meta = {"encoding": encoding.encode()}
        if encoding == "json/protobuf":
            meta["messageType"] = call.get("messageType", "compute.v1.ComputeRequest").encode()
        return RawValue(Payload(metadata=meta, data=json.dumps(value).encode()))
    return value


async def main() -> None:
    address, task_queue, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = await Client.connect(address)
    own_queue = f"py-{uuid.uuid4()}"
    out = []
    async with Worker(client, task_queue=own_queue, workflows=[PythonComputeCaller]):
        for call in calls:
            call["taskQueue"] = task_queue
            wf_id = f"py-caller-{uuid.uuid4()}"
            result = await client.execute_workflow(
                PythonComputeCaller.run, call, id=wf_id, task_queue=own_queue,
                execution_timeout=timedelta(seconds=120),
            )
            result["workflowId"] = wf_id
            out.append(result)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    # The SDK's native runtime threads can abort interpreter finalization ("PyGILState_Release
    # ... must be current") after all work is done; the results are out, so skip it.
    os._exit(0)
