"""Run compembed's trainer (one process, or one rank under torchrun) on a small synthetic set.

``--stop-after K`` interrupts the run after step K (on every rank), as a kill would.
"""
import argparse

from compembed.models import ModelConfig
from compembed.training import DataConfig, OptimConfig, TrainConfig, train


class Stop(Exception):
    pass


def make_config(batch_size: int) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(scheme="qr", embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), threshold=0),
        optim=OptimConfig(name="adagrad", lr=0.05),
        data=DataConfig(source="synthetic", rows=421, cardinality_scale=0.0005, seed=3),
        batch_size=batch_size, epochs=3, log_every=2, checkpoint_every=2, threads=1, eval_every=2, early_stopping=2,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, required=True, help="rows per rank and step")
    parser.add_argument("--stop-after", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    config = make_config(args.batch_size)

    def stop(state):
        if args.stop_after and state["step"] == args.stop_after:
            raise Stop

    try:
        train(config, out_dir=args.out, resume=args.resume, progress=False, on_step=stop)
    except Stop:
        pass


if __name__ == "__main__":
    main()
