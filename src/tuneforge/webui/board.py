"""The board's page: Train, Evaluate, Chat and Export tabs over one `Board` (actions.py). Layout and wiring
live here; fields <-> config keys in form.py, what is shown in render.py, what a button does in actions.py.

Every field is a config key under its own name, so the page's config is a YAML file `tuneforge train` runs
unchanged, and a YAML file loads back into the page. Keys the form has no field for go in "Other keys".
"""

from __future__ import annotations

from ..errors import TuneforgeError
from ..infer.webchat import _gradio, blocks_kwargs, chat_turn, chatbot_kwargs
from . import catalog, config_io
from .form import (GC_CHOICES, LR_SCHEDULES, TRAIN_DEFAULTS, TRAIN_KEYS, config_to_fields, form_config,
                   read_field, stage_keys_yaml)
from .labels import LANGUAGES, TEXT, label
from .render import STATE_TEXT, estimate_markdown, loss_figure, plot_key, progress_html, tokenized_html

GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")

# ----- the page ------------------------------------------------------------------------------------------

def build_board(board, lang: str = "en", refresh_seconds: float = 1.0):
    """The board (a gr.Blocks, not launched) over `board` (actions.Board)."""
    gr = _gradio()
    labelled = []  # (component, label key): relabelled when the language changes

    def L(key, component):
        labelled.append((component, key))
        return component

    def T(key):
        return label(key, lang)

    with gr.Blocks(title=T("title"), analytics_enabled=False, **blocks_kwargs(gr)) as page:
        with gr.Row():
            language = gr.Dropdown(list(LANGUAGES), value=lang, label=" / ".join(TEXT["lang"]), scale=1,
                                   elem_id="tf-lang")  # in both languages: the way back from either
            model = L("model_name_or_path", gr.Dropdown(
                catalog.model_choices([board.path("saves"), board.path("models")]), value=None,
                allow_custom_value=True, label=T("model_name_or_path"), scale=3, elem_id="tf-model"))
            adapter = L("adapter_name_or_path", gr.Textbox(label=T("adapter_name_or_path"), scale=3,
                                                           elem_id="tf-adapter"))
            template = L("template", gr.Dropdown(catalog.template_choices(), value="auto", label=T("template"),
                                                 scale=2, elem_id="tf-template"))
            method = L("finetuning_type", gr.Dropdown(list(catalog.METHODS), value="lora",
                                                      label=T("finetuning_type"), scale=1, elem_id="tf-method"))
        model_fields = [model, adapter, template, method]

        with gr.Tab(T("tab_train"), id="train", elem_id="tf-tab-train") as train_tab:
            f = {}
            with gr.Row():
                f["stage"] = gr.Dropdown(catalog.stage_choices(), value="sft", elem_id="tf-stage")
                f["dataset_dir"] = gr.Textbox(value=TRAIN_DEFAULTS["dataset_dir"], elem_id="tf-dataset-dir")
                f["dataset"] = gr.Dropdown(_datasets(board, "data", "sft"), multiselect=True, allow_custom_value=True,
                                           elem_id="tf-dataset", scale=2)
            with gr.Row():
                for key in ("learning_rate", "num_train_epochs", "max_steps", "cutoff_len", "max_samples"):
                    f[key] = gr.Number(value=TRAIN_DEFAULTS.get(key), elem_id=f"tf-{key}")
            with gr.Row():
                for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
                    f[key] = gr.Number(value=TRAIN_DEFAULTS[key], precision=0, elem_id=f"tf-{key}")
                f["lr_scheduler_type"] = gr.Dropdown(list(LR_SCHEDULES), value="cosine", elem_id="tf-lr-schedule")
                f["warmup_ratio"] = gr.Number(value=TRAIN_DEFAULTS["warmup_ratio"], elem_id="tf-warmup_ratio")
            with gr.Accordion(T("acc_method"), open=False) as acc_method:
                with gr.Row():
                    for key in ("lora_rank", "lora_alpha", "lora_dropout", "freeze_trainable_layers"):
                        f[key] = gr.Number(value=catalog.form_key(key).default, elem_id=f"tf-{key}")
                    f["lora_target"] = gr.Textbox(value=catalog.form_key("lora_target").default,
                                                  elem_id="tf-lora_target")
            with gr.Accordion(T("acc_more"), open=False) as acc_more:
                with gr.Row():
                    for key in ("logging_steps", "save_steps", "seed"):
                        f[key] = gr.Number(value=TRAIN_DEFAULTS[key], precision=0, elem_id=f"tf-{key}")
                    f["gradient_checkpointing"] = gr.Dropdown(list(GC_CHOICES), value="auto", elem_id="tf-gc")
                f["extra_yaml"] = gr.Code(value="", language="yaml", interactive=True, elem_id="tf-extra")
            f["output_dir"] = gr.Textbox(value=TRAIN_DEFAULTS["output_dir"], elem_id="tf-output-dir")
            for key, component in f.items():
                component.label = T(key)
                labelled.append((component, key))
            train_fields = [f[key] for key in TRAIN_KEYS]
            with gr.Row():
                preview_btn = L("preview", gr.Button(T("preview"), elem_id="tf-preview"))
                estimate_btn = L("estimate", gr.Button(T("estimate"), elem_id="tf-estimate"))
                start_btn = L("start", gr.Button(T("start"), variant="primary", elem_id="tf-start"))
                stop_btn = L("stop", gr.Button(T("stop"), variant="stop", elem_id="tf-stop"))
                resume_btn = L("resume", gr.Button(T("resume"), elem_id="tf-resume"))
            with gr.Row():
                config_path = L("config_path", gr.Textbox(value="saves/webui-config.yaml", label=T("config_path"),
                                                          scale=4, elem_id="tf-config-path"))
                save_btn = L("save_config", gr.Button(T("save_config"), scale=1, elem_id="tf-save"))
                load_btn = L("load_config", gr.Button(T("load_config"), scale=1, elem_id="tf-load"))
            message = gr.Markdown(elem_id="tf-message")
            estimate_out = gr.Markdown(elem_id="tf-estimate-out")
            progress = gr.HTML(elem_id="tf-progress")
            plot = L("loss_plot", gr.Plot(label=T("loss_plot"), format="png", elem_id="tf-plot"))
            log = L("log", gr.Textbox(label=T("log"), lines=10, max_lines=10, autoscroll=True, elem_id="tf-log"))
            with gr.Accordion(T("yaml_preview"), open=False) as acc_yaml:
                yaml_view = gr.Code(language="yaml", interactive=False, elem_id="tf-yaml")
            with gr.Accordion(T("preview"), open=False) as acc_preview:
                rows_view = L("rows", gr.JSON(label=T("rows"), elem_id="tf-rows"))
                tokens_view = L("tokenized", gr.HTML(label=T("tokenized"), elem_id="tf-tokens"))

        with gr.Tab(T("tab_evaluate"), id="evaluate", elem_id="tf-tab-evaluate") as eval_tab:
            e = {}
            with gr.Row():
                e["dataset_dir"] = gr.Textbox(value="data", elem_id="tf-eval-dataset-dir")
                e["eval_dataset"] = gr.Dropdown(_datasets(board, "data", "sft"), multiselect=True,
                                                allow_custom_value=True, elem_id="tf-eval-dataset", scale=2)
            with gr.Row():
                e["cutoff_len"] = gr.Number(value=1024, precision=0, elem_id="tf-eval-cutoff")
                e["max_samples"] = gr.Number(value=50, precision=0, elem_id="tf-eval-max-samples")
                e["max_new_tokens"] = gr.Number(value=128, precision=0, elem_id="tf-eval-max-new")
                e["per_device_eval_batch_size"] = gr.Number(value=8, precision=0, elem_id="tf-eval-batch")
            e["output_dir"] = gr.Textbox(value="saves/webui-predict", elem_id="tf-eval-output-dir")
            for key, component in e.items():
                component.label = T(key)
                labelled.append((component, key))
            with gr.Row():
                eval_start = L("start", gr.Button(T("start"), variant="primary", elem_id="tf-eval-start"))
                eval_stop = L("stop", gr.Button(T("stop"), variant="stop", elem_id="tf-eval-stop"))
            eval_message = gr.Markdown(elem_id="tf-eval-message")
            eval_progress = gr.HTML(elem_id="tf-eval-progress")
            eval_results = L("results", gr.JSON(label=T("results"), elem_id="tf-eval-results"))
            eval_rows = L("predictions", gr.JSON(label=T("predictions"), elem_id="tf-eval-rows"))
            eval_log = L("log", gr.Textbox(label=T("log"), lines=8, max_lines=8, elem_id="tf-eval-log"))

        with gr.Tab(T("tab_chat"), id="chat", elem_id="tf-tab-chat") as chat_tab:
            with gr.Row():
                load_model_btn = L("load_model", gr.Button(T("load_model"), variant="primary", elem_id="tf-chat-load"))
                unload_btn = L("unload_model", gr.Button(T("unload_model"), elem_id="tf-chat-unload"))
                loaded = L("chat_model", gr.Textbox(label=T("chat_model"), interactive=False, elem_id="tf-chat-loaded",
                                                    scale=3))
            history = gr.State([])
            chatbot = L("conversation", gr.Chatbot(label=T("conversation"), height=360, elem_id="tf-chatbot",
                                                   **chatbot_kwargs(gr)))
            with gr.Row():
                box = L("message", gr.Textbox(show_label=False, placeholder=T("message"), scale=6,
                                              elem_id="tf-chat-box"))
                send = L("send", gr.Button(T("send"), variant="primary", scale=1, elem_id="tf-chat-send"))
                chat_stop = L("stop", gr.Button(T("stop"), scale=1, elem_id="tf-chat-stop"))
                chat_clear = L("clear", gr.Button(T("clear"), scale=1, elem_id="tf-chat-clear"))
            system = L("system", gr.Textbox(label=T("system"), lines=2, elem_id="tf-chat-system"))
            with gr.Row():
                temperature = L("temperature", gr.Slider(0, 2, value=0.95, step=0.01, label=T("temperature")))
                top_p = L("top_p", gr.Slider(0.01, 1, value=0.7, step=0.01, label=T("top_p")))
                max_new = L("max_new_tokens", gr.Slider(1, 4096, value=512, step=1, label=T("max_new_tokens")))

        with gr.Tab(T("tab_export"), id="export", elem_id="tf-tab-export") as export_tab:
            with gr.Row():
                export_dir = L("export_dir", gr.Textbox(value="saves/webui-export", label=T("export_dir"), scale=3,
                                                        elem_id="tf-export-dir"))
                export_format = L("export_format", gr.Dropdown(["safetensors", "gguf"], value="safetensors",
                                                               label=T("export_format"), elem_id="tf-export-format"))
                export_quant = L("export_quantization", gr.Dropdown(list(GGUF_QUANTS), value="f16",
                                                                    label=T("export_quantization"),
                                                                    elem_id="tf-export-quant"))
                export_size = L("export_size", gr.Number(value=5, precision=0, label=T("export_size"),
                                                         elem_id="tf-export-size"))
            export_btn = L("start", gr.Button(T("start"), variant="primary", elem_id="tf-export-start"))
            export_message = gr.Markdown(elem_id="tf-export-message")
            export_files = L("files", gr.Textbox(label=T("files"), lines=6, elem_id="tf-export-files"))
            export_log = L("log", gr.Textbox(label=T("log"), lines=8, max_lines=8, elem_id="tf-export-log"))

        # ----- wiring ---------------------------------------------------------------------------------
        def config_of(*values):
            return form_config(list(values[:len(model_fields)]), list(values[len(model_fields):]))

        all_train = model_fields + train_fields

        def show_yaml(*values):
            try:
                return config_io.to_yaml(config_of(*values))
            except TuneforgeError as err:
                return f"# {err}"

        for component in all_train:
            component.change(show_yaml, all_train, yaml_view, show_progress="hidden")

        def on_stage(stage, dataset_dir, extra):
            choices = _datasets(board, dataset_dir, stage)
            keep = [line for line in (extra or "").splitlines() if not line.startswith("# ")]
            return gr.update(choices=choices, value=[]), "\n".join(keep + [stage_keys_yaml(stage)]).strip()

        # .input: only what the user changes (Load config sets stage and datasets together and keeps both)
        f["stage"].input(on_stage, [f["stage"], f["dataset_dir"], f["extra_yaml"]], [f["dataset"], f["extra_yaml"]])
        f["dataset_dir"].input(lambda d, s: gr.update(choices=_datasets(board, d, s)), [f["dataset_dir"], f["stage"]],
                               f["dataset"])
        e["dataset_dir"].input(lambda d: gr.update(choices=_datasets(board, d, "sft")), e["dataset_dir"],
                               e["eval_dataset"])

        def preview(*values):
            try:
                config = board.from_workdir(config_of(*values))
                names = [n for n in (config.get("dataset") or "").split(",") if n]
                if not names:
                    raise TuneforgeError("choose a dataset to preview")
                rows = catalog.preview_rows(config["dataset_dir"], names[0], 3)
                examples = catalog.preview_tokenized(config, 2) if config.get("model_name_or_path") else []
            except (TuneforgeError, OSError, ValueError) as err:
                raise gr.Error(str(err) or type(err).__name__) from err
            return rows, tokenized_html(examples), gr.update(open=True)

        preview_btn.click(preview, all_train, [rows_view, tokens_view, acc_preview])

        def estimate(*values):
            try:
                return estimate_markdown(board.estimate(config_of(*values)))
            except TuneforgeError as err:
                return estimate_markdown({"error": str(err)})

        estimate_btn.click(estimate, all_train, estimate_out)

        def start(resume, *values):
            try:
                started = board.start_train(config_of(*values), resume=resume)
            except (TuneforgeError, OSError) as err:
                return f"**not started:** {err}"
            return f"started: `{started.command}` (log: running_log.txt in the output folder)"

        start_btn.click(lambda *v: start(False, *v), all_train, message)
        resume_btn.click(lambda *v: start(True, *v), all_train, message)
        stop_btn.click(lambda d: board.stop(d), f["output_dir"], message)

        def save(path, *values):
            try:
                config = config_of(*values)
                config_io.save_config(config, board.path(path))
            except (TuneforgeError, OSError) as err:
                return f"**not saved:** {err}"
            return f"saved {board.path(path)}: run it with `tuneforge train {board.path(path)}`"

        save_btn.click(save, [config_path] + all_train, message)

        def load(path):
            try:
                config = config_io.from_yaml(board.path(path))
            except (TuneforgeError, OSError) as err:
                raise gr.Error(f"cannot load {path}: {err}") from err
            model_values, train_values = config_to_fields(config)
            return model_values + train_values + [f"loaded {board.path(path)}"]

        load_btn.click(load, config_path, all_train + [message])

        shown_plot = gr.State("")

        def refresh(folder, shown):
            prog, state = board.status(folder)
            key = plot_key(prog)
            chart = gr.skip() if key == shown else loss_figure(prog)
            if prog is None:
                return "", chart, "", key
            return progress_html(prog, state), chart, prog.log_tail, key

        timer = gr.Timer(refresh_seconds)
        timer.tick(refresh, [f["output_dir"], shown_plot], [progress, plot, log, shown_plot], show_progress="hidden")

        # evaluate
        def eval_config(*values):
            config = config_of(*values[:len(model_fields)], *[None] * len(train_fields))
            for key in ("do_train", "plot_loss", "dataset", "stage"):
                config.pop(key, None)
            for (key, _), value in zip(e.items(), values[len(model_fields):]):
                config[key] = read_field("list" if key == "eval_dataset" else
                                    ("str" if key in ("dataset_dir", "output_dir") else "int"), value)
            config["overwrite_output_dir"] = True
            return {k: v for k, v in config.items() if v is not None}

        eval_fields = model_fields + list(e.values())

        def eval_start_fn(*values):
            try:
                started = board.start_predict(eval_config(*values))
            except TuneforgeError as err:
                return f"**not started:** {err}"
            return f"started: `{started.command}`"

        eval_start.click(eval_start_fn, eval_fields, eval_message)
        eval_stop.click(lambda d: board.stop(d), e["output_dir"], eval_message)

        def eval_refresh(folder):
            prog, state = board.status(folder)
            if prog is None:
                return "", None, None, ""
            results, rows = board.predict_results(folder) if state in (None, "finished") else ({}, [])
            shown = progress_html(prog, state) if state else ""
            return shown, results or None, rows or None, prog.log_tail

        timer.tick(eval_refresh, e["output_dir"], [eval_progress, eval_results, eval_rows, eval_log],
                   show_progress="hidden")

        # chat
        def chat_config(*values):
            config = config_of(*values, *[None] * len(train_fields))
            return {k: config[k] for k in ("model_name_or_path", "adapter_name_or_path", "template",
                                           "finetuning_type", "quantization_bit") if k in config}

        def load_chat(*values):
            try:
                return board.load_chat(chat_config(*values))
            except TuneforgeError as err:
                raise gr.Error(str(err)) from err

        load_model_btn.click(load_chat, model_fields, loaded)
        unload_btn.click(lambda: (board.unload_chat(), "")[1], None, loaded)

        def respond(text, history, system, temperature, top_p, max_new_tokens):
            try:
                engine = board.engine()
            except TuneforgeError as err:
                raise gr.Error(str(err)) from err
            yield from chat_turn(gr, engine, text, history, system, float(temperature), float(top_p),
                                 int(max_new_tokens), engine.default_params().repetition_penalty)

        chatting = gr.on([box.submit, send.click], respond, [box, history, system, temperature, top_p, max_new],
                         [box, chatbot, history])
        chat_stop.click(None, None, None, cancels=[chatting])
        chat_clear.click(lambda: ("", [], []), None, [box, chatbot, history], cancels=[chatting])

        # export
        def export_config(fmt, quant, size, folder, *values):
            config = chat_config(*values)
            config.pop("quantization_bit", None)
            config.update(export_dir=folder, export_format=fmt)
            if fmt == "gguf":
                config["export_quantization"] = quant
            elif size:
                config["export_size"] = int(size)
            return config

        def export_start(fmt, quant, size, folder, *values):
            try:
                started = board.start_export(export_config(fmt, quant, size, folder, *values))
            except TuneforgeError as err:
                return f"**not started:** {err}"
            return f"started: `{started.command}`"

        export_btn.click(export_start, [export_format, export_quant, export_size, export_dir] + model_fields,
                         export_message)

        def export_refresh(folder):
            job = board.job(folder) if folder else None
            if job is None:
                return "", ""
            files = "\n".join(board.export_files(folder)) if job.state == "finished" else ""
            state = STATE_TEXT.get(job.state, job.state)
            return files, job.tail(20) + f"\n[{state}]"

        timer.tick(export_refresh, export_dir, [export_files, export_log], show_progress="hidden")

        # language
        def relabel(lang_value):
            return [gr.update(label=label(key, lang_value)) if not isinstance(c, gr.Button)
                    else gr.update(value=label(key, lang_value)) for c, key in labelled]

        labelled += [(train_tab, "tab_train"), (eval_tab, "tab_evaluate"), (chat_tab, "tab_chat"),
                     (export_tab, "tab_export"), (acc_method, "acc_method"), (acc_more, "acc_more"),
                     (acc_yaml, "yaml_preview"), (acc_preview, "preview")]
        language.change(relabel, language, [c for c, _ in labelled])
    return page


def _datasets(board, dataset_dir, stage) -> list[str]:
    try:
        return catalog.dataset_choices(str(board.path(dataset_dir or "data")), stage)
    except TuneforgeError:
        return []
