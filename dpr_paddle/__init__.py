"""dpr_paddle: Dense Passage Retrieval in PaddlePaddle with an exact gradient cache.

    from dpr_paddle import Retriever

Importing the package changes nothing in the process: no environment variable, no stream, and
paddle is not imported (the readers and the evaluation stay light). The commands, and
`Retriever.load`, apply the CPU defaults of `common.runtime.cpu_defaults` before paddle loads.
The layout is described in docs/architecture.md.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # `from dpr_paddle import Retriever` without importing paddle for every `import dpr_paddle`
    if name == "Retriever":
        from .serving.api import Retriever

        return Retriever
    raise AttributeError(f"module 'dpr_paddle' has no attribute {name!r}")
