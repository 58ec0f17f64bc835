"""Operator access: the shell over SSH, telnet and serial lines, on one shared model.

`service` starts the doors on one event loop; `login` holds the policy they all share
(access lists, passwords, three tries); `terminal` runs one operator's session."""
