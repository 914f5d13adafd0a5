// Runs the caller workflow once: a TypeScript worker for it on its own task queue, and a
// client that starts it and waits. Prints `RESULT <json>` on stdout.
//
//   TEMPORAL_ADDRESS=localhost:7233 node lib/run.js --task-queue ts-caller \
//     --compute-task-queue compute --tenant ts-demo
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import type { CallerInput } from './workflows';

function flag(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? process.argv[i + 1] : fallback;
  if (value === undefined) {
    throw new Error(`--${name} is required`);
  }
  return value;
}

async function main(): Promise<void> {
  const address = process.env.TEMPORAL_ADDRESS ?? 'localhost:7233';
  const namespace = process.env.TEMPORAL_NAMESPACE ?? 'default';
  const taskQueue = flag('task-queue', 'ts-caller');
  const input: CallerInput = {
    computeTaskQueue: flag('compute-task-queue', 'compute'),
    tenantId: flag('tenant', 'ts-demo'),
    spec: JSON.parse(flag('spec', '{"command": ["sleep", "3600"]}')),
  };
  const native = await NativeConnection.connect({ address });
  const worker = await Worker.create({
    connection: native,
    namespace,
    taskQueue,
    workflowsPath: require.resolve('./workflows'),
  });
  const connection = await Connection.connect({ address });
  const client = new Client({ connection, namespace });
  try {
    const result = await worker.runUntil(
      client.workflow.execute('computeCaller', {
        taskQueue,
        workflowId: `ts-caller-${input.tenantId}-${Date.now()}`,
        args: [input],
        workflowExecutionTimeout: '5 minutes',
      }),
    );
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  } finally {
    await connection.close();
    await native.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
