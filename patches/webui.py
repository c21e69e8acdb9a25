"""LlamaBoard, LLaMA-Factory's web UI: the module-LR fields of the Train tab and everywhere their values flow.

- ``create_train_tab`` builds the stock tab with the fields as extra inputs of its events (``get_base_elems``
  hands them out while the tab is built), renders them in an accordion right after the multimodal one, and puts
  a per-module plot and table under the loss plot, refreshed while a run trains.
- ``LOCALES`` gets the labels, in every language LlamaBoard offers.
- ``Runner._initialize`` refuses a bad value, or a key for a frozen module, with the CLI's message: it shows in
  the output box and nothing starts. ``Runner._parse_train_args`` turns set fields into config keys (preview,
  start).
- ``Runner._build_config_dict`` saves the set fields inside the extra arguments, where stock LlamaBoard can still
  load them; ``Runner.load_args`` and ``Runner.check_output_dir`` take them back out into the fields.

gradio and LLaMA-Factory's web UI are imported only inside the wrappers: this module loads with every patch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import fields
from functools import wraps
from types import SimpleNamespace
from typing import Any

from lf_multilr.config.checks import refuse_frozen
from lf_multilr.config.settings import settings_of
from lf_multilr.errors import ConfigError
from lf_multilr.webui import fields as webui_fields
from lf_multilr.webui import view as webui_view

from . import hparams

#: Element id of each field (key name -> ``train.<key>``) and of LlamaBoard's extra-arguments box.
FIELD_IDS: dict[str, str] = {key.name: f"train.{key.name}" for key in webui_fields.ui_keys()}
EXTRA_ARGS = "train.extra_args"
#: HTML ids, for people and tests that look for the fields.
HTML_ID = "lf_multilr_{}"
TABLE_HTML_ID = "lf_multilr_table"
#: How often the per-module view re-reads the run's log, and how long it waits for a run to start.
POLL_S = 2.0
START_WAIT_S = 10.0

_extra_inputs: ContextVar[frozenset[Any]] = ContextVar("lf_multilr_extra_inputs", default=frozenset())


def with_labels(locales: dict[str, Any]) -> dict[str, Any]:
    """A copy of LlamaBoard's ``LOCALES`` with the fields' labels."""
    added = webui_fields.locales()
    clash = sorted(added.keys() & locales.keys())
    if clash:
        raise RuntimeError(f"LlamaBoard already has elements named {clash}")
    return {**locales, **added}


def wrap_get_base_elems(original: Any) -> Any:
    @wraps(original)
    def get_base_elems(self: Any) -> set[Any]:
        return original(self) | _extra_inputs.get()

    return get_base_elems


def wrap_create_train_tab(original: Any) -> Any:
    @wraps(original)
    def create_train_tab(engine: Any) -> dict[str, Any]:
        import gradio as gr

        # Made first and rendered later, so that the stock tab wires them into its events with its own inputs.
        english = webui_fields.locales()
        inputs = {
            key.name: gr.Textbox(
                render=False,
                elem_id=HTML_ID.format(key.name),
                label=english[key.name]["en"]["label"],
                info=english[key.name]["en"]["info"],
            )
            for key in webui_fields.ui_keys()
        }
        token = _extra_inputs.set(frozenset(inputs.values()))
        try:
            elems: dict[str, Any] = original(engine)
        finally:
            _extra_inputs.reset(token)

        with gr.Accordion(english[webui_fields.TAB]["en"]["label"], open=False, elem_id=webui_fields.TAB) as tab:
            for row in webui_fields.rows():
                with gr.Row():
                    for key in row:
                        inputs[key.name].render()
        _move_after(tab, elems.get("mm_tab"))
        viewer = _add_viewer(engine, elems, english[webui_fields.VIEWER]["en"]["label"])
        return {**elems, webui_fields.TAB: tab, **inputs, **viewer}

    return create_train_tab


def _move_after(block: Any, anchor: Any) -> None:
    """Show ``block`` right after ``anchor`` (gradio lays out a container's ``children`` in order)."""
    if anchor is None or anchor.parent is None or block.parent is None:
        return
    block.parent.children.remove(block)
    siblings = anchor.parent.children
    siblings.insert(siblings.index(anchor) + 1, block)
    block.parent = anchor.parent


def _add_viewer(engine: Any, elems: dict[str, Any], label: str) -> dict[str, Any]:
    """The per-module plot and table under the loss plot, following a run from Start (or a reloaded page)."""
    import gradio as gr

    if not {"loss_viewer", "output_dir", "start_btn", "resume_btn"} <= elems.keys():
        return {}
    plot = gr.Plot(visible=False, elem_id=HTML_ID.format("viewer"), label=label)
    table = gr.Markdown(visible=False, elem_id=TABLE_HTML_ID)
    _move_after(table, elems["loss_viewer"])
    _move_after(plot, elems["loss_viewer"])
    manager = engine.manager
    inputs = [manager.get_elem_by_id("top.model_name"), manager.get_elem_by_id("top.finetuning_type")]
    follow = _follower(engine.runner)
    for event in (elems["start_btn"].click, elems["resume_btn"].change):
        event(follow, [*inputs, elems["output_dir"]], [plot, table], concurrency_limit=None, show_progress="hidden")
    return {webui_fields.VIEWER: plot}


def _follower(runner: Any) -> Any:
    def follow(model_name: str | None, finetuning_type: str, output_dir: str | None) -> Iterator[tuple[Any, Any]]:
        from llamafactory.extras.constants import TRAINER_LOG
        from llamafactory.webui.common import get_save_dir

        if not (model_name and output_dir):
            yield _view("")
            return
        path = os.path.join(get_save_dir(model_name, finetuning_type, output_dir), TRAINER_LOG)
        deadline = time.monotonic() + START_WAIT_S
        while not runner.running and time.monotonic() < deadline:  # Start's own handler launches the run
            time.sleep(0.2)
        while True:
            running = runner.running
            yield _view(path)
            if not running:
                return
            time.sleep(POLL_S)

    return follow


def _view(path: str) -> tuple[Any, Any]:
    import gradio as gr

    found = webui_view.series(webui_view.read_records(path)) if path else {}
    if not found:
        return gr.Plot(visible=False), gr.Markdown(visible=False)
    table = f"```\n{webui_view.table(found)}\n```"
    return gr.Plot(value=webui_view.figure(found), visible=True), gr.Markdown(table, visible=True)


def _element(runner: Any, elem_id: str) -> Any:
    try:
        return runner.manager.get_elem_by_id(elem_id)
    except KeyError:  # not built with the fields (the tab's shape did not match)
        return None


def _texts(runner: Any, data: dict[Any, Any]) -> dict[str, Any]:
    """The fields' texts among an event's inputs (key name -> text)."""
    elems = {name: _element(runner, elem_id) for name, elem_id in FIELD_IDS.items()}
    return {name: data[elem] for name, elem in elems.items() if elem is not None and elem in data}


def check_args(args: dict[str, Any]) -> None:
    """Refuse what the CLI refuses about lf-multilr's keys from the config alone, with its message.

    The arguments go through the CLI's own finetuning-arguments class (bad values, optimizers that drop the
    groups, other back ends) and its checks of what the run trains (the model's config; under LoRA or OFT
    LLaMA-Factory's adapter setup on the meta device). A value LLaMA-Factory's own finetuning arguments refuse
    (a ``ValueError`` of theirs) is left to the run to report, as without lf-multilr; anything else is a bug and
    is raised.
    """
    from llamafactory.hparams import FinetuningArguments, ModelArguments

    keyed = hparams.keyed_class(FinetuningArguments)
    names = {field.name for field in fields(keyed) if field.init}
    try:
        finetuning_args = keyed(**{name: value for name, value in args.items() if name in names})
    except ConfigError:
        raise
    except ValueError:  # LLaMA-Factory's own refusal: the run reports it, as without lf-multilr
        return
    settings = settings_of(finetuning_args)
    if not settings.any_set:
        return
    model_fields = {field.name for field in fields(ModelArguments) if field.init}
    try:
        model_args = ModelArguments(**{name: value for name, value in args.items() if name in model_fields})
    except ValueError:  # LLaMA-Factory's own refusal: the run reports it
        refuse_frozen(settings, finetuning_args)
        return
    # the numbers the groups are built with (the checks read only what trains, not how the optimizer splits it)
    numbers = SimpleNamespace(
        learning_rate=float(args.get("learning_rate", 0.0)),
        weight_decay=float(args.get("weight_decay", 0.0)),
        optim="adamw_torch",
    )
    hparams.refuse_untrained(settings, model_args, numbers, finetuning_args)


def wrap_initialize(original: Any) -> Any:
    @wraps(original)
    def _initialize(self: Any, data: dict[Any, Any], do_train: bool, from_preview: bool) -> str:
        error: str = original(self, data, do_train, from_preview)
        extra = data.get(_element(self, EXTRA_ARGS))
        if error or not do_train or not webui_fields.set_names(_texts(self, data), extra):
            return error
        try:
            check_args(self._parse_train_args(data))
        except ConfigError as refusal:
            return str(refusal)
        return error

    return _initialize


def wrap_parse_train_args(original: Any) -> Any:
    @wraps(original)
    def _parse_train_args(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
        args: dict[str, Any] = original(self, data)
        args.update(webui_fields.values(_texts(self, data)))  # a set field wins over the extra arguments
        return args

    return _parse_train_args


def wrap_build_config_dict(original: Any) -> Any:
    @wraps(original)
    def _build_config_dict(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
        return webui_fields.fold(original(self, data), FIELD_IDS, EXTRA_ARGS)

    return _build_config_dict


def _restore(runner: Any, outputs: dict[Any, Any]) -> dict[Any, Any]:
    """A loaded config's outputs (element -> value) with the fields set from its extra arguments."""
    extra = _element(runner, EXTRA_ARGS)
    elems = {elem_id: _element(runner, elem_id) for elem_id in (*FIELD_IDS.values(), EXTRA_ARGS)}
    if extra not in outputs or None in elems.values():
        return outputs
    config = {elem_id: outputs[elem] for elem_id, elem in elems.items() if elem in outputs}
    for elem_id, text in webui_fields.unfold(config, FIELD_IDS, EXTRA_ARGS).items():
        outputs[elems[elem_id]] = text
    return outputs


def wrap_load_args(original: Any) -> Any:
    @wraps(original)
    def load_args(self: Any, lang: str, config_path: str) -> dict[Any, Any]:
        return _restore(self, original(self, lang, config_path))

    return load_args


def wrap_check_output_dir(original: Any) -> Any:
    @wraps(original)
    def check_output_dir(self: Any, lang: str, model_name: str, finetuning_type: str, output_dir: str) -> Any:
        return _restore(self, original(self, lang, model_name, finetuning_type, output_dir))

    return check_output_dir
