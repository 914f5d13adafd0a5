package com.example.compute;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.temporal.activity.ActivityOptions;
import io.temporal.client.WorkflowClient;
import io.temporal.client.WorkflowOptions;
import io.temporal.common.RetryOptions;
import io.temporal.failure.ApplicationFailure;
import io.temporal.serviceclient.WorkflowServiceStubs;
import io.temporal.serviceclient.WorkflowServiceStubsOptions;
import io.temporal.worker.Worker;
import io.temporal.worker.WorkerFactory;
import io.temporal.workflow.ActivityStub;
import io.temporal.workflow.SignalMethod;
import io.temporal.workflow.Workflow;
import io.temporal.workflow.WorkflowInterface;
import io.temporal.workflow.WorkflowMethod;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A caller workflow in Java: it calls compute-worker's activities by name on the worker's task
 * queue (an untyped stub: nothing of compute-worker is imported), hears the completion as a
 * signal, reads the execution, and deletes. Requests and answers are plain JSON maps; the
 * compute.v1 messages of contract/proto/ (protoc-gen-java) may be passed instead, which the
 * SDK sends as json/protobuf and the worker reads the same way.
 */
@WorkflowInterface
public interface ComputeCaller {
  @WorkflowMethod(name = "ComputeCaller")
  Map<String, Object> run(String computeTaskQueue, String tenantId, Map<String, Object> spec);

  @SignalMethod(name = "compute-provisioned")
  void provisioned(Map<String, Object> callback);

  @SignalMethod(name = "compute-updated")
  void updated(Map<String, Object> callback);

  @SignalMethod(name = "compute-deleted")
  void deleted(Map<String, Object> callback);

  @SignalMethod(name = "compute-failed")
  void failed(Map<String, Object> callback);

  /** The workflow. */
  class Impl implements ComputeCaller {
    // Codes the worker classifies as not worth retrying (`compute-worker retry-policy`).
    private static final String[] NON_RETRYABLE = {
      "INVALID_CONFIGURATION", "QUOTA_EXCEEDED", "NOT_FOUND", "PERMISSION_DENIED",
      "WORKLOAD_FAILED", "CANCELLED", "INTERNAL", "PARTIAL_FAILURE"
    };
    private final List<Map<String, Object>> heard = new ArrayList<>();

    @Override
    public void provisioned(Map<String, Object> callback) {
      heard.add(callback);
    }

    @Override
    public void updated(Map<String, Object> callback) {
      heard.add(callback);
    }

    @Override
    public void deleted(Map<String, Object> callback) {
      heard.add(callback);
    }

    @Override
    public void failed(Map<String, Object> callback) {
      heard.add(callback);
    }

    /** The signal of this execution (it may come before the activity's answer). */
    private Map<String, Object> signalFor(Map<String, Object> handle) {
      Object id = handle.get("executionId");
      boolean came =
          Workflow.await(
              Duration.ofMinutes(2),
              () -> heard.stream().anyMatch(cb -> id.equals(cb.get("executionId"))));
      if (!came) {
        throw ApplicationFailure.newNonRetryableFailure(
            "no callback for " + id + " (state " + handle.get("state") + ")", "CALLBACK_TIMEOUT");
      }
      Optional<Map<String, Object>> found =
          heard.stream().filter(cb -> id.equals(cb.get("executionId"))).findFirst();
      return found.orElseThrow();
    }

    @Override
    @SuppressWarnings("unchecked")
    public Map<String, Object> run(
        String computeTaskQueue, String tenantId, Map<String, Object> spec) {
      ActivityStub compute =
          Workflow.newUntypedActivityStub(
              ActivityOptions.newBuilder()
                  .setTaskQueue(computeTaskQueue)
                  .setStartToCloseTimeout(Duration.ofMinutes(1))
                  .setRetryOptions(
                      RetryOptions.newBuilder()
                          .setMaximumAttempts(5)
                          .setDoNotRetry(NON_RETRYABLE)
                          .build())
                  .build());
      Map<String, Object> request = new LinkedHashMap<>();
      request.put("tenantId", tenantId);
      request.put("spec", spec);
      request.put("metadata", Map.of("owner", "java-example"));
      Map<String, Object> provisioned =
          compute.execute("ProvisionTenantCompute", Map.class, request);
      Map<String, Object> provisionSignal = signalFor(provisioned);
      if (!"succeeded".equals(provisionSignal.get("state"))) {
        throw ApplicationFailure.newNonRetryableFailure(
            "provision ended " + provisionSignal.get("state"), "FAILED");
      }
      Map<String, Object> status =
          compute.execute(
              "GetComputeExecution", Map.class, Map.of("executionId", provisioned.get("executionId")));
      Map<String, Object> deleted =
          compute.execute("DeleteTenantCompute", Map.class, Map.of("tenantId", tenantId));
      Map<String, Object> deleteSignal = signalFor(deleted);
      Map<String, Object> result = new LinkedHashMap<>();
      result.put("provisioned", provisioned);
      result.put("provisionSignal", provisionSignal);
      result.put("status", status);
      result.put("deleted", deleted);
      result.put("deleteSignal", deleteSignal);
      return result;
    }
  }

  /** Runs a worker for the caller on its own task queue, starts it once and prints the result. */
  @SuppressWarnings("unchecked")
  static void main(String[] args) throws Exception {
    Map<String, String> flags = new LinkedHashMap<>();
    flags.put("--task-queue", "java-caller");
    flags.put("--compute-task-queue", "compute");
    flags.put("--tenant", "java-demo");
    flags.put("--spec", "{\"command\": [\"sleep\", \"3600\"]}");
    for (int i = 0; i + 1 < args.length; i += 2) {
      flags.put(args[i], args[i + 1]);
    }
    String address = Optional.ofNullable(System.getenv("TEMPORAL_ADDRESS")).orElse("localhost:7233");
    WorkflowServiceStubs service =
        WorkflowServiceStubs.newServiceStubs(
            WorkflowServiceStubsOptions.newBuilder().setTarget(address).build());
    WorkflowClient client = WorkflowClient.newInstance(service);
    WorkerFactory factory = WorkerFactory.newInstance(client);
    String taskQueue = flags.get("--task-queue");
    Worker worker = factory.newWorker(taskQueue);
    worker.registerWorkflowImplementationTypes(Impl.class);
    factory.start();
    String tenant = flags.get("--tenant");
    ComputeCaller caller =
        client.newWorkflowStub(
            ComputeCaller.class,
            WorkflowOptions.newBuilder()
                .setTaskQueue(taskQueue)
                .setWorkflowId("java-caller-" + tenant + "-" + System.nanoTime())
                .setWorkflowExecutionTimeout(Duration.ofMinutes(5))
                .build());
    Map<String, Object> spec = new ObjectMapper().readValue(flags.get("--spec"), Map.class);
    Map<String, Object> result = caller.run(flags.get("--compute-task-queue"), tenant, spec);
    System.out.println("RESULT " + new ObjectMapper().writeValueAsString(result));
    factory.shutdown();
    System.exit(0);
  }
}
