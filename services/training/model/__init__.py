"""The trained model: loading the base (``load``), LoRA (``lora``), lean layers, the optimizer
and the fine-tuning methods (``methods``). Training process; knows nothing of data or the loop."""
