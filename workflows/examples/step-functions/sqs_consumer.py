"""Bridges a Step Functions `sqs:sendMessage.waitForTaskToken` task to compute-worker.

For each SQS message written by state-machine.asl.json
({"taskToken", "operation", "request", "heartbeatSeconds"?, "policy"?}) it starts
`TenantComputeWorkflow` on task queue `compute` with the callback
{"stepFunctions": {"taskToken", "heartbeatSeconds"}}, then deletes the message. The worker,
not this process, answers the token when the operation ends, so this consumer holds no state
and may be restarted or run as several replicas at any time.

Usage:
  COMPUTE_SQS_QUEUE_URL=https://sqs.../compute-requests TEMPORAL_ADDRESS=127.0.0.1:7233 \
    python3 sqs_consumer.py

AWS credentials and region come from boto3's usual chain; the Temporal connection from the
SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS
variables or a temporal.toml profile), like the worker's. IAM: sqs:ReceiveMessage,
sqs:DeleteMessage on the queue, and states:SendTaskFailure (only for malformed messages).
Give the queue a redrive policy: a message this consumer cannot read goes to its DLQ.
"""

import asyncio
import hashlib
import json
import logging
import os
import signal
from typing import Any, Optional

import boto3
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.envconfig import ClientConfig
from temporalio.exceptions import WorkflowAlreadyStartedError

WORKFLOW_TYPE = "TenantComputeWorkflow"
TASK_QUEUE = os.environ.get("COMPUTE_TASK_QUEUE", "compute")
OPERATIONS = ("provision", "update", "delete")

log = logging.getLogger("compute-sqs-consumer")


class Malformed(Exception):
    """The message has a task token but not the shape the state machine sends."""


def workflow_id(tenant_id: str, task_token: str) -> str:
    # One task token is one Step Functions task attempt, so it is the natural idempotency key.
    # Hashing it keeps the id short (tokens run to 1 KiB) and keeps the token itself out of
    # workflow ids, which show up in the UI, in `workflow list` and in logs.
    digest = hashlib.sha256(task_token.encode()).hexdigest()[:32]
    return f"sfn-{tenant_id}-{digest}"


def workflow_input(body: dict[str, Any], task_token: str) -> tuple[str, dict[str, Any]]:
    """Returns (tenant id, TenantComputeWorkflow input) or raises Malformed.

    Only the shape is checked here; the worker validates the request itself and answers the
    token with Compute.INVALID_CONFIGURATION if it is wrong.
    """
    operation = body.get("operation")
    request = body.get("request")
    if operation not in OPERATIONS:
        raise Malformed(f"operation must be one of {', '.join(OPERATIONS)}")
    if not isinstance(request, dict) or not isinstance(request.get("tenantId"), str):
        raise Malformed("request must be an object with a string tenantId")
    step_functions: dict[str, Any] = {"taskToken": task_token}
    heartbeat = body.get("heartbeatSeconds")
    if heartbeat is not None:
        # Must equal the Task state's HeartbeatSeconds: the worker heartbeats more often than
        # this, so the task only times out when nothing is working on it.
        if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat <= 0:
            raise Malformed("heartbeatSeconds must be a positive integer")
        step_functions["heartbeatSeconds"] = heartbeat
    # The state machine decides where the outcome goes; any callback in the request is replaced.
    request = {**request, "callback": {"stepFunctions": step_functions}}
    wf_input: dict[str, Any] = {"operation": operation, "request": request}
    if body.get("policy") is not None:
        wf_input["policy"] = body["policy"]
    return request["tenantId"], wf_input


class Consumer:
    def __init__(self, client: Client, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.sqs = boto3.client("sqs")
        self.sfn = boto3.client("stepfunctions")
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                # boto3 blocks; a thread keeps the event loop (and the Temporal client) free.
                resp = await asyncio.to_thread(
                    self.sqs.receive_message,
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=20,  # long polling: no busy loop on an empty queue
                    # Long enough to start a workflow; a message whose start failed
                    # reappears after it and is tried again.
                    VisibilityTimeout=60,
                )
            except Exception as err:
                log.warning("ReceiveMessage failed (%s); retrying in 5s.", err)
                await asyncio.sleep(5)
                continue
            for message in resp.get("Messages", []):
                try:
                    await self.handle(message)
                except Exception as err:
                    # One bad message (or a failed delete) must not stop the others; it comes
                    # back after the visibility timeout. Only the type: the text may quote it.
                    log.warning("Message %s not handled (%s); will retry.",
                                message["MessageId"], type(err).__name__)

    async def handle(self, message: dict[str, Any]) -> None:
        message_id = message["MessageId"]
        try:
            body = json.loads(message["Body"])
            task_token = body["taskToken"]
            if not isinstance(task_token, str) or not task_token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            # Without a token nobody can be told; leave the message for the DLQ. The body is
            # not logged: it holds the token and the request.
            log.error("Message %s has no readable taskToken; leaving it for the DLQ.", message_id)
            return

        try:
            tenant_id, wf_input = workflow_input(body, task_token)
        except Malformed as err:
            await self.refuse(task_token, str(err), message_id)
            await self.delete(message)
            return

        wf_id = workflow_id(tenant_id, task_token)
        try:
            await self.client.start_workflow(
                WORKFLOW_TYPE,
                wf_input,
                id=wf_id,
                task_queue=TASK_QUEUE,
                # A redelivered message must start nothing, even after the first workflow has
                # closed (its token is already answered): never reuse the id.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            log.info("Started %s for tenant %s (message %s).", wf_id, tenant_id, message_id)
        except WorkflowAlreadyStartedError:
            log.info("%s already started: message %s was a redelivery.", wf_id, message_id)
        except Exception as err:
            # Temporal unreachable or similar: keep the message; it comes back after the
            # visibility timeout. The exception text may quote the input, so only its type.
            log.warning("Could not start %s (message %s, %s); will retry.",
                        wf_id, message_id, type(err).__name__)
            return
        await self.delete(message)

    async def refuse(self, task_token: str, why: str, message_id: str) -> None:
        # Fail the task at once, in the worker's own error shape, rather than letting the
        # execution wait for its heartbeat timeout.
        cause = {
            "code": "INVALID_CONFIGURATION",
            "message": f"SQS message from Step Functions: {why}",
            "classification": "non_retriable",
            "retriable": False,
        }
        try:
            await asyncio.to_thread(
                self.sfn.send_task_failure,
                taskToken=task_token,
                error="Compute.INVALID_CONFIGURATION",
                cause=json.dumps(cause),
            )
        except (self.sfn.exceptions.TaskTimedOut, self.sfn.exceptions.TaskDoesNotExist,
                self.sfn.exceptions.InvalidToken):
            pass  # the task is already over: nothing left to tell, the message can go
        log.error("Refused message %s: %s.", message_id, why)

    async def delete(self, message: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.sqs.delete_message,
            QueueUrl=self.queue_url,
            ReceiptHandle=message["ReceiptHandle"],
        )


async def connect() -> Client:
    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", "localhost:7233")
    return await Client.connect(**config)


async def main(queue_url: Optional[str] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    queue_url = queue_url or os.environ["COMPUTE_SQS_QUEUE_URL"]
    consumer = Consumer(await connect(), queue_url)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Finish the current batch, then stop: a message is never half handled.
        loop.add_signal_handler(sig, consumer.stopping.set)
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main())
