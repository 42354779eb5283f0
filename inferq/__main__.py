from inferq.cli import main

if __name__ == "__main__":  # spawned helper processes (worker.augment) import this module again as __mp_main__
    main()
