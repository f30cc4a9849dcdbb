"""One rank of TorchrunMultinodeFlow's train step: join the process group torchrun set up, all-reduce a tensor."""
import torch
import torch.distributed as dist

dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
total = torch.ones(1, device=device)
dist.all_reduce(total)
assert int(total.item()) == world, (total, world)
print(f"rank {rank} of {world}: all_reduce ok")
dist.destroy_process_group()
