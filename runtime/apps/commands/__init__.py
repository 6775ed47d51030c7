"""The ``diffzoo`` commands, one module each (as optimum's ``commands/``): ``register(subparsers)`` adds
the command's options, ``run(args)`` does the work and returns the exit status. Library code is
imported inside ``run``, so ``diffzoo sample`` never imports torch.
"""
