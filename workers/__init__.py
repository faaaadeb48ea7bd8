"""Workers: queues, the per-device scheduler, engines and the worker loop."""
