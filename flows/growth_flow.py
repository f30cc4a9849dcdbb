"""GrowthFlow: select data, pretrain small LMs, grow them into a large one, train it, predict its gap.

    USER=me python flows/growth_flow.py run                          # config/default.toml
    USER=me python flows/growth_flow.py --config config config/tiny.toml run --seed 1
    USER=me python flows/growth_flow.py resume --origin-run-id <id>  # after a failed step

Each step builds its stage's config, calls ``steps.<stage>.run``, keeps what it returns
as artifacts and draws its card. The logic lives in ``steps/`` and ``libs/``.
"""

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # no carriage-return bars in line-based task logs
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from metaflow import Config, FlowSpec, Parameter, card, config_expr, current, resources, retry, step

from cli_checks import clean_data_errors
from config_source import config_parser, settings_of, validated_settings  # flows/ is the script's folder
from project_code import ship_project_code
from metaflow import checkpoint  # metaflow-checkpoint (requirements.txt): checkpoints in the datastore
from checkpointing import datastore_checkpoints  # flows/checkpointing.py
from libs.token_data import TokenData
from steps.config import GrowthConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAIL_ENV = "GROWTHFLOW_FAIL_AT_STEP"  # test-only switch: "<arm>:<step>" makes train_large crash there
# (the same name as steps.train_large.FAIL_ENV, which the data-parallel ranks read)


def _settings(flow) -> GrowthConfig:
    """The run's typed config, from the ``settings`` artifact that ``start`` validated once."""
    return settings_of(GrowthConfig, flow.settings)


def _plain(result) -> dict:
    """A stage result as a plain dict (numbers, strings, lists, dicts, arrays, bytes): an artifact anyone can
    open with the Client API, without this repository's classes."""
    import dataclasses

    return dataclasses.asdict(result)


def _share_cpus(n_branches: int) -> None:
    """Parallel foreach branches on one CPU machine: split the cores instead of oversubscribing them."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(n_branches, 1)))


@ship_project_code
class GrowthFlow(FlowSpec):
    """Train a large transformer for less compute: selection, small models, growth, large model, gap."""

    # the default is found from any working directory (run and resume need not start in the repository)
    config = Config("config", default=os.path.join(_ROOT, "config", "default.toml"),
                    parser=config_parser(GrowthConfig, "config/default.toml"))
    seed = Parameter("seed", type=int, default=config_expr("config.seed"),
                     help="seeds every stage; the same config and seed give the same selection and metrics")
    budget = Parameter("budget", type=float, default=config_expr("config.select.budget"),
                       help="selected fraction of the training documents (overrides select.budget)")

    @card(type="blank")
    @step
    def start(self):
        """Validate the configuration before any work starts."""
        from steps.config import describe_run
        from flow_cards import render

        with clean_data_errors():
            self.settings = validated_settings(GrowthConfig, self.config,
                                               {"seed": self.seed, "select.budget": float(self.budget)})
        render(describe_run(self.settings))
        self.next(self.prepare)

    @card(type="blank")
    @step
    def prepare(self):
        """Corpus -> documents -> train/val split -> tokenizer -> token arrays."""
        from libs.fingerprint import data_fingerprint
        from steps import prepare
        from flow_cards import render

        cfg = _settings(self)
        with clean_data_errors():                   # a data error is one line naming the file and the fix
            result = prepare.run(cfg.prepare, seed=cfg.seed)
        self.documents = result.documents
        self.tokenizer_json = result.tokenizer_json
        self.train_tokens, self.train_lengths = result.train_tokens, result.train_lengths
        self.val_tokens, self.val_lengths = result.val_tokens, result.val_lengths
        self.train_texts = result.train_texts
        self.train_sources, self.val_sources = result.train_sources, result.val_sources
        self.vocab_size, self.seq_len = result.vocab_size, result.seq_len
        self.pad_id, self.bos_id, self.eos_id = result.pad_id, result.bos_id, result.eos_id
        self.source_counts = result.source_counts
        self.prepare_seconds = result.seconds
        # what the gap zoo matches runs on: the tokenizer and every token array (libs/fingerprint.py)
        self.data_fingerprint = data_fingerprint(result.tokenizer_json, result.train_tokens, result.train_lengths,
                                                 result.val_tokens, result.val_lengths)
        render(prepare.report(result))
        self.next(self.embed)

    @card(type="blank")
    @resources(cpu=config_expr("config.resources.embed.cpu"), memory=config_expr("config.resources.embed.memory"))
    @step
    def embed(self):
        """Embed the training documents."""
        from steps import embed
        from flow_cards import render

        cfg = _settings(self)
        result = embed.run(cfg.embed, self.train_texts, seed=cfg.seed)
        self.embeddings = result.embeddings
        self.embedder_name, self.embedder_version = result.embedder_name, result.embedder_version
        self.embed_seconds = result.seconds
        render(embed.report(result))
        self.next(self.select_data)

    @card(type="blank")
    @resources(cpu=config_expr("config.resources.select.cpu"), memory=config_expr("config.resources.select.memory"))
    @step
    def select_data(self):
        """k-means sensitivity sampling: a small weighted subset whose weighted loss tracks the corpus."""
        from steps import select_data
        from flow_cards import render

        cfg = _settings(self)
        result = select_data.run(cfg.select, data=TokenData.from_attrs(self), embeddings=self.embeddings,
                                 seed=cfg.seed)
        self.selection = _plain(result)          # every figure of the selection, plain data
        self.selection_indices, self.selection_weights = result.indices, result.weights
        self.selection_assignment = result.assignment
        render(select_data.report(result))
        self.small_model_names = [m.name for m in cfg.pretrain_small.models]
        self.next(self.pretrain_small, foreach="small_model_names")

    @card(type="blank")
    @card(type="blank", id="live", refresh_interval=5)
    @resources(cpu=config_expr("config.resources.pretrain_small.cpu"),
               memory=config_expr("config.resources.pretrain_small.memory"),
               gpu=config_expr("config.resources.pretrain_small.gpu"))
    @step
    def pretrain_small(self):
        """Pretrain one small LM on the selected data (one foreach branch per small model)."""
        from steps import pretrain_small
        from flow_cards import LiveLossCard, render

        cfg = _settings(self)
        _share_cpus(len(self.small_model_names))
        index = self.small_model_names.index(self.input)
        spec = cfg.pretrain_small.models[index]
        indices, weights = pretrain_small.subset_for_model(cfg.pretrain_small, index, self.selection_indices,
                                                           self.selection_weights, self.selection_assignment)
        result = pretrain_small.run(cfg.pretrain_small, spec, data=TokenData.from_attrs(self), indices=indices,
                                    weights=weights, seed=cfg.seed + 1000 * index,
                                    on_eval=LiveLossCard(f"small model {spec.name}"),
                                    train_eval_rows=cfg.predict_gap.train_eval_rows,
                                    feature_rows=cfg.predict_gap.feature_rows)
        self.small_model = _plain(result)
        render(pretrain_small.report(result))
        self.next(self.join_small)

    @card(type="blank")
    @step
    def join_small(self, inputs):
        """Collect the small models, their curves and the gap-zoo rows of their checkpoints."""
        from steps.join_small import run, report
        from flow_cards import render

        self.merge_artifacts(inputs, exclude=["small_model"])
        result = run([inp.small_model for inp in inputs])
        self.small_models, self.small_curves = result.small_models, result.small_curves
        self.small_inits, self.small_moments = result.small_inits, result.small_moments
        self.small_final_val_loss = result.small_final_val_loss
        self.small_flops, self.small_flops_total = result.small_flops, result.small_flops_total
        self.gap_zoo_rows = result.gap_zoo_rows
        render(report(result))
        self.next(self.grow)

    @card(type="blank")
    @step
    def grow(self):
        """Fuse the small models into one wider model; measure function preservation."""
        from steps import grow
        from flow_cards import render

        cfg = _settings(self)
        result = grow.run(cfg.grow, small_models=self.small_models, check_tokens=self.val_tokens, seed=cfg.seed,
                          small_inits=getattr(self, "small_inits", None),     # absent in runs before they were kept
                          small_moments=getattr(self, "small_moments", None))
        self.grown_model, self.grown_reference_init = result.model_files, result.reference_init_files
        self.grown_moments = result.moment_files
        self.grow_method, self.grow_components = result.method, result.components
        self.grow_shape_before, self.grow_shape_after = result.shape_before, result.shape_after
        self.grow_preservation, self.grow_n_params = result.preservation, result.n_params
        self.grow_seconds = result.seconds
        render(grow.report(result))
        self.arms = list(cfg.train_large.arms)
        self.next(self.train_large, foreach="arms")

    @card(type="blank")
    @card(type="blank", id="live", refresh_interval=5)
    @datastore_checkpoints                              # restore from / upload to the datastore (flows/checkpointing.py)
    @checkpoint(load_policy="none", show_card=False)    # which checkpoint loads is scoped by datastore_checkpoints
    @retry(times=1, minutes_between_retries=0)
    @resources(cpu=config_expr("config.resources.train_large.cpu"),
               memory=config_expr("config.resources.train_large.memory"),
               gpu=config_expr("config.resources.train_large.gpu"))
    @step
    def train_large(self):
        """One arm (GPU when there is one): the grown model, scratch of the same shape, or the control (the first
        small model trained on for equal total FLOPs, the capacity check).

        With ``train_large.nproc_per_node > 1`` the arm trains data-parallel on that many
        processes of this node, started by metaflow-torchrun's single-node launcher.
        """
        from steps import train_large
        from flow_cards import LiveLossCard, render

        cfg = _settings(self)
        _share_cpus(len(self.arms))
        arm = self.input
        data = TokenData.from_attrs(self)
        arm_cfg, init_files, init_flops, moments = cfg.train_large, self.grown_model, 0.0, None
        # the gap row counts the tokens an arm's initialization already trained on (as the LM zoo's epochs do)
        gap = {"train_eval_rows": cfg.predict_gap.train_eval_rows, "feature_rows": cfg.predict_gap.feature_rows,
               "tokens_before": 0.0}
        if arm == "grown":                          # the post-growth schedule (train_large.grown_schedule)
            arm_cfg = train_large.arm_config(cfg.train_large, arm, components_train=cfg.pretrain_small.train)
            gap["tokens_before"] = float(sum(c[-1]["tokens"] for c in self.small_curves.values())
                                         / len(self.small_curves))
            gap["reference_init"] = getattr(self, "grown_reference_init", None)   # the grown random inits
            moments = train_large.grown_moment_files(cfg.train_large, getattr(self, "grown_moments", None))
        self.control_plan = None
        if arm == "control":                        # the first small model, trained on for equal total FLOPs
            first = self.small_model_names[0]
            init_files, init_flops = self.small_models[first], float(self.small_flops[first])
            gap["tokens_before"] = float(self.small_curves[first][-1]["tokens"])
            gap["reference_init"] = getattr(self, "small_inits", {}).get(first)    # its own random init
            self.control_plan = train_large.control_plan(cfg.train_large, grown_files=self.grown_model,
                                                         control_files=init_files, control_spent_flops=init_flops,
                                                         data=data, indices=self.selection_indices)
            arm_cfg = train_large.arm_config(cfg.train_large, arm, control_steps=self.control_plan["steps"],
                                             control_lr=cfg.pretrain_small.train.lr)
        result = train_large.run(arm_cfg, arm, init_files=init_files, data=data, indices=self.selection_indices,
                                 weights=self.selection_weights, seed=cfg.seed, init_flops=init_flops,
                                 checkpoint_dir=_checkpoint_dir(f"train_large/{arm}"),
                                 on_eval=LiveLossCard(f"large model, {arm}"), on_step=_failure_injector(arm),
                                 launch=_torchrun_launcher(cfg.train_large.nproc_per_node), gap=gap,
                                 moment_files=moments)
        self.large_arm = _plain(result)
        render(train_large.report(result))
        self.next(self.join_large)

    @card(type="blank")
    @step
    def join_large(self, inputs):
        """Did growing pay? Every grown arm against scratch, behind the capacity check against the control."""
        from steps import join_large
        from flow_cards import render

        self.merge_artifacts(inputs, exclude=["large_arm", "control_plan"])
        arms = {inp.large_arm["arm"]: inp.large_arm for inp in inputs}
        self.control_plan = next((inp.control_plan for inp in inputs if inp.control_plan), None)
        self.large_models = {arm: r["model_files"] for arm, r in arms.items()}
        self.large_curves = {arm: r["curve"] for arm, r in arms.items()}
        self.large_tokens_per_s = {arm: r["tokens_per_s"] for arm, r in arms.items()}
        self.large_devices = {arm: r["device"] for arm, r in arms.items()}
        self.large_flops_per_step = {arm: r["flops_per_step"] for arm, r in arms.items()}
        self.large_targets = {arm: {"features": r["gap_features"], "gap": r["measured_gap"]}
                              for arm, r in arms.items()}
        result = join_large.run(curves=self.large_curves, flops_per_step=self.large_flops_per_step,
                                small_pretrain_flops=self.small_flops,
                                components={"grown": list(self.grow_components)},
                                control_small_model=self.small_model_names[0])
        self.verdict, self.verdict_summary = result.verdict, result.summary
        self.large_final_val_loss = result.final_val_loss
        render(join_large.report(result))
        self.next(self.predict_gap)

    @card(type="blank")
    @step
    def predict_gap(self):
        """Fit gap predictors on the zoo (this run's and earlier runs' checkpoints); predict the large models'."""
        from steps import predict_gap
        from flow_cards import render

        from libs.gap_features import measurement_fingerprint
        from zoo_client import gap_zoo_inputs

        cfg = _settings(self)
        self.measurement_fingerprint = measurement_fingerprint(cfg.predict_gap.train_eval_rows,
                                                               cfg.predict_gap.feature_rows)
        self.gap_own_rows = predict_gap.own_rows(self.settings, self.gap_zoo_rows)
        rows, sources, excluded = gap_zoo_inputs(cfg.predict_gap, flow_name=current.flow_name, run_id=current.run_id,
                                                 own_rows=self.gap_own_rows, data_fingerprint=self.data_fingerprint,
                                                 measurement_fingerprint=self.measurement_fingerprint)
        earlier_ids = {s["run_id"] for s in sources if s.get("role") == "earlier run"}
        earlier = [r for r in rows if r["source"] in earlier_ids]
        result = predict_gap.run(cfg.predict_gap, zoo_rows=rows, targets=self.large_targets, seed=cfg.seed,
                                 sources=sources, excluded=excluded)
        self.gap_prediction = _plain(result)
        self.gap_predictions = result.predictions
        self.gap_n_earlier_rows = len(earlier)
        render(predict_gap.report(result))
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        """One table: what this run measured."""
        from steps import end
        from flow_cards import render

        cfg = _settings(self)
        result = end.run(n_train_docs=len(self.train_tokens), n_selected=len(self.selection_indices),
                         selection_method=cfg.select.method, grow_method=cfg.grow.method,
                         preservation=self.grow_preservation, verdict=self.verdict,
                         verdict_summary=self.verdict_summary, large_final_val_loss=self.large_final_val_loss,
                         large_tokens_per_s=self.large_tokens_per_s, gap_predictions=self.gap_predictions)
        self.summary = result.figures
        self.summary_text = result.text
        render(end.report(result))
        print(end.console_text(result, flow_file=os.path.relpath(__file__), run_id=current.run_id))

def _checkpoint_dir(name: str) -> str:
    """The step's local checkpoint folder, restored from Metaflow's datastore by ``@datastore_checkpoints``.

    Checkpoints live in the datastore (metaflow-checkpoint's ``@checkpoint``), so ``@retry``
    and ``resume`` find them on any machine; nothing is written under the working directory.
    A resume loads its origin run's checkpoint of the same branch; a fresh run never loads
    another run's. See flows/checkpointing.py.
    """
    from checkpointing import checkpoint_dir

    return checkpoint_dir(name)


def _failure_injector(arm: str):
    """Test-only: ``GROWTHFLOW_FAIL_AT_STEP=<arm>:<step>`` crashes that arm's training at that step.

    Under data parallelism the ranks read the same variable themselves (see steps/train_large_ddp.py).
    """
    from steps.train_large import failure_injector

    return failure_injector(arm, os.environ.get(FAIL_ENV, ""))


def _torchrun_launcher(nproc_per_node: int):
    """metaflow-torchrun's single-node launcher when ``train_large.nproc_per_node > 1`` (else None).

    ``TorchrunSingleNodeMultiGPU().run(entrypoint=..., nproc_per_node=..., entrypoint_args=...)``
    runs ``python -m torch.distributed.run`` on this machine and streams the ranks' output into
    the task's logs; steps/ receives it as a plain callable and never imports Metaflow.
    """
    if nproc_per_node <= 1:
        return None
    from metaflow import TorchrunSingleNodeMultiGPU  # the metaflow-torchrun extension (requirements.txt)

    return TorchrunSingleNodeMultiGPU().run


if __name__ == "__main__":
    from cli_checks import check_command_line  # flows/cli_checks.py: a wrong command fails in one line, no run made

    sys.argv = check_command_line(sys.argv, "GrowthFlow", config_cls=GrowthConfig,
                                  default_config=os.path.join(_ROOT, "config", "default.toml"),
                                  parameters={"seed": "seed", "budget": "select.budget"})
    GrowthFlow()
