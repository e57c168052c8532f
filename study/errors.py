"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class StudyError(Exception):
    """A problem the user can fix (bad params, bad data, missing model...).

    The message is shown as-is on one line, so it must name the problem and,
    where there is one, the way out.
    """
