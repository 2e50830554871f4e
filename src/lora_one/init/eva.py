"""EVA (Paischer et al., 2024, "One Initialization to Rule them All"), PEFT's data-driven init: A₀
holds the top right-singular vectors of each target layer's *inputs* on a few training batches
(incremental SVD until they converge, `tau`), B₀ = 0, so the model is unchanged at init. With
`rho` > 1 PEFT redistributes ranks across layers by explained variance."""
from lora_one.init.method import InitMethod, InitReport, register
from lora_one.progress import on_terminal


@register
class EVA(InitMethod):
    name = "EVA"
    needs_batches = True

    def lora_config_kwargs(self, cfg) -> dict:
        from peft import EvaConfig

        return {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=float(cfg.rho), tau=float(cfg.tau))}

    def initialise(self, model, cfg, batches, accelerator, seq2seq):
        from peft import initialize_lora_eva_weights

        mine = [{k: v.to(accelerator.device) for k, v in b.items()}
                for b in batches[accelerator.process_index :: accelerator.num_processes]]
        # PEFT's own bar, on a terminal only: elsewhere its redraws pile up unreadably (lora_one.progress)
        initialize_lora_eva_weights(model, mine, show_progress_bar=accelerator.is_main_process and on_terminal())
        return InitReport()
