"""The long-running consumer: the loop, dispatch, settling, status and its housekeeping."""
