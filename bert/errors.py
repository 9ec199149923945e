"""The one exception type for bad user input. It lives at the bottom: bert/, data/ and helper/ all raise it."""


class UserError(Exception):
    """Bad input from the user (config, data, model choice). The message is one line naming the key, file or line."""
