"""Every place lf-multilr touches, in one table. ``tests/test_targets.py`` keeps it true."""

from __future__ import annotations

from . import hparams, logs, optimizer, resume, scheduler, transformers4, webui
from ._patching import Target
from .versions import CORE_TRANSFORMERS, FULL_SUITE_LLAMAFACTORY, VERIFIED_LLAMAFACTORY, VERIFIED_TRANSFORMERS

_STAGE_TRAINERS = tuple(f"llamafactory.train.{stage}.trainer" for stage in ("sft", "pt", "rm", "dpo", "kto", "ppo"))
_RUNNER = "llamafactory.webui.runner"
_GRAD_NORM_TARGETS = ("transformers.trainer.Trainer._clip_grad_norm", "transformers.trainer.Trainer._get_grad_norm")

TARGETS: tuple[Target, ...] = (
    Target(
        "llamafactory.hparams.parser",
        "_TRAIN_ARGS",
        hparams.with_keys,
        stock_safe=True,
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.hparams.parser",
        "_TRAIN_MCA_ARGS",
        hparams.with_keys,
        stock_safe=True,
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.hparams.parser",
        "get_train_args",
        hparams.wrap_get_train_args,
        importers=("llamafactory.hparams", "llamafactory.train.tuner", "llamafactory.train.test_utils"),
        signature=("args",),
        stock_safe=True,
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.train.trainer_utils",
        "create_custom_optimizer",
        optimizer.wrap_create_custom_optimizer,
        importers=_STAGE_TRAINERS,
        signature=("model", "training_args", "finetuning_args"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.train.callbacks",
        "LogCallback.on_log",
        logs.wrap_log_callback_on_log,
        signature=("self", "args", "state", "control"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.extras.ploting",
        "plot_loss",
        logs.wrap_plot_loss,
        importers=tuple(
            f"llamafactory.train.{stage}.workflow"
            for stage in ("sft", "pt", "rm", "dpo", "kto", "ppo", "mca", "hyper_parallel")
        ),
        signature=("save_dictionary", "keys"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "transformers.trainer",
        "Trainer._clip_grad_norm",
        logs.wrap_clip_grad_norm,
        signature=("self", "model"),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._get_grad_norm",
        logs.wrap_get_grad_norm,
        signature=("self", "model", "grad_norm"),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(  # transformers 4.x has neither of the two above: its loop clips inline with the accelerator
        "transformers.trainer",
        "Trainer._inner_training_loop",
        transformers4.wrap_inner_training_loop,
        signature=("self", "batch_size", "args"),
        trigger="llamafactory.train.trainer_utils",
        verified=("4.57.1",),
        instead_of=_GRAD_NORM_TARGETS,
    ),
    Target(
        "accelerate.accelerator",
        "Accelerator.clip_grad_norm_",
        transformers4.wrap_accelerator_clip_grad_norm,
        signature=("self", "parameters", "max_norm"),
        trigger="llamafactory.train.trainer_utils",
        verified=("1.11.0",),  # accelerate, under transformers 4.57.1
        instead_of=_GRAD_NORM_TARGETS,
    ),
    Target(
        "transformers.trainer",
        "Trainer.create_scheduler",
        scheduler.wrap_create_scheduler,
        signature=("self", "num_training_steps", "optimizer"),
        trigger="llamafactory.train.trainer_utils",
        verified=CORE_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._get_learning_rate",
        logs.wrap_get_learning_rate,
        signature=("self",),
        trigger="llamafactory.train.trainer_utils",
        verified=CORE_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer.log",
        logs.wrap_trainer_log,
        signature=("self", "logs"),
        trigger="llamafactory.train.trainer_utils",
        verified=CORE_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._load_from_checkpoint",
        resume.wrap_load_from_checkpoint,
        signature=("self", "resume_from_checkpoint", "model"),
        trigger="llamafactory.train.trainer_utils",
        verified=CORE_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._load_best_model",
        resume.wrap_load_best_model,
        signature=("self",),
        trigger="llamafactory.train.trainer_utils",
        verified=CORE_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._load_optimizer_and_scheduler",
        resume.wrap_load_optimizer_and_scheduler,
        signature=("self", "checkpoint"),
        trigger="llamafactory.train.trainer_utils",
        verified=CORE_TRANSFORMERS,
    ),
    Target(
        "llamafactory.webui.locales",
        "LOCALES",
        webui.with_labels,
        importers=("llamafactory.webui.engine", _RUNNER),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.webui.manager",
        "Manager.get_base_elems",
        webui.wrap_get_base_elems,
        signature=("self",),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.webui.components.train",
        "create_train_tab",
        webui.wrap_create_train_tab,
        importers=("llamafactory.webui.components", "llamafactory.webui.interface"),
        signature=("engine",),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner._initialize",
        webui.wrap_initialize,
        signature=("self", "data", "do_train", "from_preview"),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner._parse_train_args",
        webui.wrap_parse_train_args,
        signature=("self", "data"),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner._build_config_dict",
        webui.wrap_build_config_dict,
        signature=("self", "data"),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner.load_args",
        webui.wrap_load_args,
        signature=("self", "lang", "config_path"),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner.check_output_dir",
        webui.wrap_check_output_dir,
        signature=("self", "lang", "model_name", "finetuning_type", "output_dir"),
        verified=FULL_SUITE_LLAMAFACTORY,
    ),
)
