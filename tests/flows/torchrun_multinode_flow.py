"""The multi-node shape of data-parallel training: ``num_parallel`` nodes x ``@torchrun`` on Kubernetes.

    python tests/flows/torchrun_multinode_flow.py --datastore s3 argo-workflows create --only-json

Compiled (not run) by tests/test_torchrun.py: with metaflow 2.19.39 and metaflow-torchrun
0.2.2 a ``num_parallel`` ``@torchrun`` step fails in a local run ('TorchrunDecoratorParallel'
object has no attribute 'input_paths') and needs an S3-type datastore, so the Argo
WorkflowTemplate (a JobSet of ``NUM_NODES`` pods, ``GPUS_PER_NODE`` GPUs each) is what can
be checked on a machine without a cluster. ``ddp_allreduce.py`` is the entry script every
rank runs: it joins the process group and all-reduces one tensor.
"""

from metaflow import FlowSpec, current, kubernetes, step, torchrun

NUM_NODES = 2
GPUS_PER_NODE = 2


class TorchrunMultinodeFlow(FlowSpec):
    """start -> train (NUM_NODES nodes, GPUS_PER_NODE ranks each) -> join -> end."""

    @step
    def start(self):
        self.next(self.train, num_parallel=NUM_NODES)

    @kubernetes(gpu=GPUS_PER_NODE, cpu=4, memory=16000)
    @torchrun
    @step
    def train(self):
        current.torch.run(entrypoint="ddp_allreduce.py", nproc_per_node=GPUS_PER_NODE)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TorchrunMultinodeFlow()
