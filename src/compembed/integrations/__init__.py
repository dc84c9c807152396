"""Optional bridges to other libraries; each submodule imports its library itself.

``compembed.integrations.torchrec`` needs TorchRec (``pip install 'compembed[torchrec]'`` plus the
``--no-deps`` steps of the Makefile); nothing in the core imports this package.
"""
