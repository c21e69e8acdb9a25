"""Every place lf-multilr touches, in one table. ``tests/test_targets.py`` keeps it true."""

from __future__ import annotations

from . import hparams, logs, optimizer, resume, scheduler, webui
from ._patching import Target
from .versions import VERIFIED_LLAMAFACTORY, VERIFIED_TRANSFORMERS

_STAGE_TRAINERS = tuple(f"llamafactory.train.{stage}.trainer" for stage in ("sft", "pt", "rm", "dpo", "kto", "ppo"))
_RUNNER = "llamafactory.webui.runner"

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
    Target(
        "transformers.trainer",
        "Trainer.create_scheduler",
        scheduler.wrap_create_scheduler,
        signature=("self", "num_training_steps", "optimizer"),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._get_learning_rate",
        logs.wrap_get_learning_rate,
        signature=("self",),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer.log",
        logs.wrap_trainer_log,
        signature=("self", "logs"),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._load_from_checkpoint",
        resume.wrap_load_from_checkpoint,
        signature=("self", "resume_from_checkpoint", "model"),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._load_best_model",
        resume.wrap_load_best_model,
        signature=("self",),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "transformers.trainer",
        "Trainer._load_optimizer_and_scheduler",
        resume.wrap_load_optimizer_and_scheduler,
        signature=("self", "checkpoint"),
        trigger="llamafactory.train.trainer_utils",
        verified=VERIFIED_TRANSFORMERS,
    ),
    Target(
        "llamafactory.webui.locales",
        "LOCALES",
        webui.with_labels,
        importers=("llamafactory.webui.engine", _RUNNER),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.webui.manager",
        "Manager.get_base_elems",
        webui.wrap_get_base_elems,
        signature=("self",),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        "llamafactory.webui.components.train",
        "create_train_tab",
        webui.wrap_create_train_tab,
        importers=("llamafactory.webui.components", "llamafactory.webui.interface"),
        signature=("engine",),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner._initialize",
        webui.wrap_initialize,
        signature=("self", "data", "do_train", "from_preview"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner._parse_train_args",
        webui.wrap_parse_train_args,
        signature=("self", "data"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner._build_config_dict",
        webui.wrap_build_config_dict,
        signature=("self", "data"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner.load_args",
        webui.wrap_load_args,
        signature=("self", "lang", "config_path"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
    Target(
        _RUNNER,
        "Runner.check_output_dir",
        webui.wrap_check_output_dir,
        signature=("self", "lang", "model_name", "finetuning_type", "output_dir"),
        verified=VERIFIED_LLAMAFACTORY,
    ),
)
