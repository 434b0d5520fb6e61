"""bertdistill's benchmarks: scripts run as ``python -m benchmarks.<script>`` from the repository root, the
harness they share (:mod:`benchmarks.harness`) and the result schema (:mod:`benchmarks.schema`)."""
