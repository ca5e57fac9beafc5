"""
Command-line tools: C{replichat} (L{replichat.scripts.cli}), the chat client
and admin command.
"""
