"""Fine-tuning methods. Each lives in its own file; importing it here registers it."""

from ftjax.methods.registry import defaults, get, names, register  # noqa: F401

# One line per method.
from ftjax.methods import full  # noqa: F401,E402
from ftjax.methods import linear_probe  # noqa: F401,E402
from ftjax.methods import bitfit  # noqa: F401,E402
from ftjax.methods import layernorm  # noqa: F401,E402
from ftjax.methods import lora  # noqa: F401,E402
from ftjax.methods import dora  # noqa: F401,E402
from ftjax.methods import ia3  # noqa: F401,E402
from ftjax.methods import adapters  # noqa: F401,E402
from ftjax.methods import prompt_tuning  # noqa: F401,E402
from ftjax.methods import prefix_tuning  # noqa: F401,E402
from ftjax.methods import qlora  # noqa: F401,E402
from ftjax.methods import top_layers  # noqa: F401,E402
