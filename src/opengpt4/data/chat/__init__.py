"""Chat data from the synthetic world: conversations, system-message constraints, and the chat data dir
(`opengpt4 data chat`). See conversations.py for the splits and constraints.py for the checkers."""
