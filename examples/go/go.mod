module example.com/compute-worker/examples/go

go 1.22

require go.temporal.io/sdk v1.31.0
