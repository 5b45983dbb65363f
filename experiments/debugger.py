"""The neural debugger: pdb's commands over a trace the model predicts.

    python -m experiments.debugger --checkpoint /tmp/run --source prog.py --call "f(1, 2)"
    python -m experiments.debugger --hf_dir /ckpt/cwm --source context.py --tokenizer /ckpt/cwm

Commands: step (s), next (n), return/out (r), continue (c), back (b), reset, print (p)
[name], where (w), list (l), help (h), quit (q). See cwm_jax/debugger/session.py for
their exact semantics and cwm_jax/debugger/cli.py for the flags.
"""

import sys

from cwm_jax.debugger.cli import main

if __name__ == "__main__":
  sys.exit(main())
