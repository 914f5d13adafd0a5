// A Restate service that runs one compute operation through compute-worker and returns its
// outcome. It parks on an awakeable, starts TenantComputeWorkflow with the callback
// {"restate": {"awakeableId"}}, and the worker resolves the awakeable with the final
// ComputeCallback, or rejects it with "<CODE>: <message>".
//
//   TEMPORAL_ADDRESS=127.0.0.1:7233 node dist/caller.js          # listens on :9080
//   restate deployments register http://localhost:9080
//   curl localhost:8080/TenantCompute/run --json \
//     '{"operation": "provision", "request": {"tenantId": "acme", "spec": {"command": ["sleep", "3600"]}}}'

import * as restate from "@restatedev/restate-sdk";
import { Client, Connection, WorkflowExecutionAlreadyStartedError } from "@temporalio/client";

const TASK_QUEUE = process.env.COMPUTE_TASK_QUEUE ?? "compute";
// Optional. The worker only calls ingress URLs it was configured with (--restate-ingress-url);
// leave this unset to use its first one, or set it to one of its values.
const INGRESS_URL = process.env.COMPUTE_RESTATE_INGRESS_URL;

type Operation = "provision" | "update" | "delete";

interface ComputeInput {
  operation: Operation;
  /** ComputeRequest (provision, update) or DeleteRequest (delete), without a callback. */
  request: { tenantId: string; [field: string]: unknown };
  /** TenantComputeWorkflow's retry / error-handling policy. */
  policy?: Record<string, unknown>;
}

/** What the worker resolves the awakeable with. */
interface ComputeCallback {
  executionId: string;
  tenantId: string;
  operation: Operation;
  state: "succeeded" | "failed" | "cancelled" | "timed_out";
  resourceIds: Record<string, unknown>;
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  sequence: number;
}

// The HTTP status a Restate ingress caller sees for each code; the code itself stays in the
// message. Not 408 or 409: Restate uses those for its own timeout and cancellation.
const HTTP_STATUS: Record<string, number> = {
  INVALID_CONFIGURATION: 400,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  QUOTA_EXCEEDED: 429,
  THROTTLED: 429,
  PROVIDER_TEMPORARILY_UNAVAILABLE: 503,
  INSUFFICIENT_CAPACITY: 503,
  TIMEOUT: 504,
};

// One connection per process, made on first use; a failed attempt is forgotten so that the
// next ctx.run retry connects again.
let temporal: Promise<Client> | undefined;
function temporalClient(): Promise<Client> {
  temporal ??= Connection.connect({ address: process.env.TEMPORAL_ADDRESS ?? "localhost:7233" })
    .then((connection) => new Client({ connection, namespace: process.env.TEMPORAL_NAMESPACE ?? "default" }))
    .catch((err: unknown) => {
      temporal = undefined;
      throw err;
    });
  return temporal;
}

const tenantCompute = restate.service({
  name: "TenantCompute",
  handlers: {
    run: async (ctx: restate.Context, input: ComputeInput): Promise<ComputeCallback> => {
      if (!["provision", "update", "delete"].includes(input?.operation) || typeof input?.request?.tenantId !== "string") {
        // Retrying cannot fix the input: terminal at once.
        throw new restate.TerminalError("INVALID_CONFIGURATION: need {operation, request: {tenantId, ...}}", {
          errorCode: 400,
        });
      }

      // The awakeable's id is journaled, so a retried invocation gets the same id back and
      // therefore the same workflow id below.
      const { id, promise } = ctx.awakeable<ComputeCallback>();
      const workflowId = `restate-${input.request.tenantId}-${id}`;

      // Inside ctx.run: once this step is journaled it never runs again. If the process dies
      // after Temporal accepted the start but before the journal entry, the rerun meets the
      // same workflow id and REJECT_DUPLICATE, which we count as success: never two workflows.
      await ctx.run("start TenantComputeWorkflow", async () => {
        const client = await temporalClient();
        try {
          await client.workflow.start("TenantComputeWorkflow", {
            taskQueue: TASK_QUEUE,
            workflowId,
            workflowIdReusePolicy: "REJECT_DUPLICATE",
            args: [
              {
                operation: input.operation,
                request: {
                  ...input.request,
                  callback: { restate: INGRESS_URL ? { awakeableId: id, ingressUrl: INGRESS_URL } : { awakeableId: id } },
                },
                ...(input.policy ? { policy: input.policy } : {}),
              },
            ],
          });
        } catch (err) {
          if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err; // retried by Restate
        }
        return workflowId;
      });

      try {
        // Suspends (no process held) until the worker completes the awakeable: once, when
        // TenantComputeWorkflow has finished, retries included.
        return await promise;
      } catch (err) {
        // The worker rejects with "<CODE>: <message>". Anything else (e.g. this invocation was
        // cancelled) passes through unchanged.
        if (!(err instanceof restate.TerminalError)) throw err;
        const code = /^([A-Z_]+): /.exec(err.message)?.[1];
        if (code === undefined) throw err;
        throw new restate.TerminalError(err.message, { errorCode: HTTP_STATUS[code] ?? 500 });
      }
    },
  },
});

restate.endpoint().bind(tenantCompute).listen(Number(process.env.PORT ?? 9080));
