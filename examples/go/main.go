// A caller workflow in Go: it calls compute-worker's activities by name on the worker's task
// queue, hears the completion as a signal, reads the execution, and deletes. Shipped
// untested: the Go module proxy (go.temporal.io/sdk) is not reachable from the machine the
// project's tests run on; the TypeScript example (examples/typescript) runs in the suite.
//
//	go mod tidy
//	TEMPORAL_ADDRESS=localhost:7233 go run . -task-queue go-caller -compute-task-queue compute -tenant go-demo
//
// Requests are plain JSON (json/plain). A caller using the compute.v1 messages of
// contract/proto/ (protoc-gen-go) may pass them as they are: the SDK sends them as
// json/protobuf, which the worker reads the same way.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// ComputeCallback is what every completion signal carries
// (contract/schema/ComputeCallback.schema.json).
type ComputeCallback struct {
	ExecutionID string         `json:"executionId"`
	TenantID    string         `json:"tenantId"`
	Operation   string         `json:"operation"`
	State       string         `json:"state"`
	Attempt     int            `json:"attempt"`
	ResourceIDs map[string]any `json:"resourceIds"`
	Error       *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
	Sequence int `json:"sequence"`
}

// ExecutionHandle is what the provision, update and delete activities return.
type ExecutionHandle struct {
	ExecutionID       string `json:"executionId"`
	TenantID          string `json:"tenantId"`
	State             string `json:"state"`
	Attached          bool   `json:"attached"`
	TrackerWorkflowID string `json:"trackerWorkflowId"`
}

// CallerInput is the caller workflow's input.
type CallerInput struct {
	ComputeTaskQueue string
	TenantID         string
	Spec             map[string]any
}

// Codes the worker classifies as not worth retrying (`compute-worker retry-policy`).
var nonRetryable = []string{
	"INVALID_CONFIGURATION", "QUOTA_EXCEEDED", "NOT_FOUND", "PERMISSION_DENIED",
	"WORKLOAD_FAILED", "CANCELLED", "INTERNAL", "PARTIAL_FAILURE",
}

var signals = []string{"compute-provisioned", "compute-updated", "compute-deleted", "compute-failed"}

// ComputeCaller provisions a tenant, waits for the signal, reads the execution, deletes it.
func ComputeCaller(ctx workflow.Context, in CallerInput) (map[string]any, error) {
	var heard []ComputeCallback
	for _, name := range signals {
		ch := workflow.GetSignalChannel(ctx, name)
		workflow.Go(ctx, func(ctx workflow.Context) {
			for {
				var cb ComputeCallback
				ch.Receive(ctx, &cb)
				heard = append(heard, cb)
			}
		})
	}
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           in.ComputeTaskQueue,
		StartToCloseTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{
			MaximumAttempts:        5,
			NonRetryableErrorTypes: nonRetryable,
		},
	})
	// The signal of this execution (it may come before the activity's answer).
	signalFor := func(h ExecutionHandle) (ComputeCallback, error) {
		var found ComputeCallback
		ok, err := workflow.AwaitWithTimeout(ctx, 2*time.Minute, func() bool {
			for _, cb := range heard {
				if cb.ExecutionID == h.ExecutionID {
					found = cb
					return true
				}
			}
			return false
		})
		if err == nil && !ok {
			err = temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("no callback for %s (state %s)", h.ExecutionID, h.State), "CALLBACK_TIMEOUT", nil)
		}
		return found, err
	}

	var provisioned ExecutionHandle
	request := map[string]any{"tenantId": in.TenantID, "spec": in.Spec,
		"metadata": map[string]any{"owner": "go-example"}}
	if err := workflow.ExecuteActivity(ctx, "ProvisionTenantCompute", request).Get(ctx, &provisioned); err != nil {
		return nil, err
	}
	provisionSignal, err := signalFor(provisioned)
	if err != nil {
		return nil, err
	}
	if provisionSignal.State != "succeeded" {
		return nil, temporal.NewNonRetryableApplicationError("provision ended "+provisionSignal.State, "FAILED", nil)
	}
	var status map[string]any
	query := map[string]any{"executionId": provisioned.ExecutionID}
	if err := workflow.ExecuteActivity(ctx, "GetComputeExecution", query).Get(ctx, &status); err != nil {
		return nil, err
	}
	var deleted ExecutionHandle
	if err := workflow.ExecuteActivity(ctx, "DeleteTenantCompute", map[string]any{"tenantId": in.TenantID}).Get(ctx, &deleted); err != nil {
		return nil, err
	}
	deleteSignal, err := signalFor(deleted)
	if err != nil {
		return nil, err
	}
	return map[string]any{"provisioned": provisioned, "provisionSignal": provisionSignal,
		"status": status, "deleted": deleted, "deleteSignal": deleteSignal}, nil
}

func main() {
	taskQueue := flag.String("task-queue", "go-caller", "this caller's task queue")
	computeQueue := flag.String("compute-task-queue", "compute", "compute-worker's task queue")
	tenant := flag.String("tenant", "go-demo", "the tenant")
	spec := flag.String("spec", `{"command": ["sleep", "3600"]}`, "the tenant's spec (JSON)")
	flag.Parse()
	var specValue map[string]any
	if err := json.Unmarshal([]byte(*spec), &specValue); err != nil {
		log.Fatalf("-spec: %v", err)
	}
	address := os.Getenv("TEMPORAL_ADDRESS")
	if address == "" {
		address = client.DefaultHostPort
	}
	c, err := client.Dial(client.Options{HostPort: address})
	if err != nil {
		log.Fatalf("connect to Temporal: %v", err)
	}
	defer c.Close()
	w := worker.New(c, *taskQueue, worker.Options{})
	w.RegisterWorkflow(ComputeCaller)
	if err := w.Start(); err != nil {
		log.Fatalf("start the worker: %v", err)
	}
	defer w.Stop()
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{
		ID:                       fmt.Sprintf("go-caller-%s-%d", *tenant, time.Now().UnixNano()),
		TaskQueue:                *taskQueue,
		WorkflowExecutionTimeout: 5 * time.Minute,
	}, ComputeCaller, CallerInput{ComputeTaskQueue: *computeQueue, TenantID: *tenant, Spec: specValue})
	if err != nil {
		log.Fatalf("start the workflow: %v", err)
	}
	var result map[string]any
	if err := run.Get(context.Background(), &result); err != nil {
		log.Fatalf("the workflow failed: %v", err)
	}
	out, _ := json.Marshal(result)
	fmt.Printf("RESULT %s\n", out)
}
