// A caller workflow in TypeScript: it calls compute-worker's activities by name on the
// worker's task queue, hears the completion as a signal, reads the execution, and deletes.
import {
  ApplicationFailure,
  condition,
  defineSignal,
  proxyActivities,
  setHandler,
} from '@temporalio/workflow';

/** The callback every completion signal carries (contract/schema/ComputeCallback.schema.json). */
export interface ComputeCallback {
  executionId: string;
  tenantId: string;
  operation: 'provision' | 'update' | 'delete';
  state: 'succeeded' | 'failed' | 'cancelled' | 'timed_out';
  attempt: number;
  resourceIds: Record<string, unknown>;
  error?: { code: string; message: string };
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  sequence: number;
}

/** What the provision, update and delete activities return. */
export interface ExecutionHandle {
  executionId: string;
  tenantId: string;
  operation: string;
  state: string;
  attempt: number;
  attached: boolean;
  trackerWorkflowId: string;
}

export interface CallerInput {
  /** compute-worker's task queue. */
  computeTaskQueue: string;
  tenantId: string;
  /** What the tenant runs (the local provider runs a command). */
  spec: Record<string, unknown>;
}

export interface CallerResult {
  provisioned: ExecutionHandle;
  provisionSignal: { signal: string; callback: ComputeCallback };
  status: Record<string, unknown>;
  deleted: ExecutionHandle;
  deleteSignal: { signal: string; callback: ComputeCallback };
}

const SIGNALS = ['compute-provisioned', 'compute-updated', 'compute-deleted', 'compute-failed'];
const FINAL = ['succeeded', 'failed', 'cancelled', 'timed_out'];

// Codes compute-worker classifies as not worth retrying (`compute-worker retry-policy`).
const NON_RETRYABLE = [
  'INVALID_CONFIGURATION',
  'QUOTA_EXCEEDED',
  'NOT_FOUND',
  'PERMISSION_DENIED',
  'WORKLOAD_FAILED',
  'CANCELLED',
  'INTERNAL',
  'PARTIAL_FAILURE',
];

export async function computeCaller(input: CallerInput): Promise<CallerResult> {
  const heard: Array<{ signal: string; callback: ComputeCallback }> = [];
  for (const name of SIGNALS) {
    setHandler(defineSignal<[ComputeCallback]>(name), (callback) => {
      heard.push({ signal: name, callback });
    });
  }
  // By name, on the worker's queue: nothing of compute-worker is imported.
  const compute = proxyActivities<Record<string, (input: unknown) => Promise<any>>>({
    taskQueue: input.computeTaskQueue,
    startToCloseTimeout: '1 minute',
    retry: { maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE },
  });

  // The signal for this execution (it may come before the activity's answer).
  const signalFor = async (handle: ExecutionHandle) => {
    const mine = () => heard.find((h) => h.callback.executionId === handle.executionId);
    if (!(await condition(() => mine() !== undefined, '2 minutes'))) {
      throw ApplicationFailure.nonRetryable(
        `no callback for ${handle.executionId} (state ${handle.state})`,
        'CALLBACK_TIMEOUT',
      );
    }
    return mine()!;
  };

  const provisioned: ExecutionHandle = await compute.ProvisionTenantCompute({
    tenantId: input.tenantId,
    spec: input.spec,
    metadata: { owner: 'typescript-example' },
  });
  const provisionSignal = await signalFor(provisioned);
  if (provisionSignal.callback.state !== 'succeeded') {
    throw ApplicationFailure.nonRetryable(
      `provision ended ${provisionSignal.callback.state}: ${provisionSignal.callback.error?.message}`,
      provisionSignal.callback.error?.code ?? 'FAILED',
    );
  }
  const status = await compute.GetComputeExecution({ executionId: provisioned.executionId });
  if (!FINAL.includes(status.state)) {
    throw ApplicationFailure.nonRetryable(`the store says ${status.state} after the signal`);
  }
  const deleted: ExecutionHandle = await compute.DeleteTenantCompute({ tenantId: input.tenantId });
  const deleteSignal = await signalFor(deleted);
  return { provisioned, provisionSignal, status, deleted, deleteSignal };
}
