"""What the daemon tells a share user when a job fails for a reason that is not in their files, and
how every error.txt ends. The texts are kept here, together, so they read as one voice; a problem
with a user's own files is explained where it is found (``JobError``'s message), naming the file.
"""

from __future__ import annotations

# The last paragraph of every error.txt: how to retry. Recognising an error.txt by it (not by
# its name alone) keeps a user's own error.png + error.txt pair a normal job.
RETRY_ADVICE = (
    "To try again: fix the problem, then drag this whole folder back into the inbox folder it "
    "came from (or move the image and its prompt file back there). The daemon ignores this "
    "error.txt and its .log file."
)
# How the error.txt of a cancelled job ends: nothing is wrong, so nothing to fix.
RERUN_ADVICE = (
    "To have it made after all: drag this whole folder back into the inbox folder it came from "
    "(or move the image and its prompt file back there). The daemon ignores this error.txt and "
    "its .log file."
)
# A cancelled job's explanation ({how}: with the file NAME.cancel, or by whom).
CANCELLED_ERROR = "This clip was cancelled {how} before it was finished. Nothing is wrong with its files."
# What error.txt files of earlier releases ended with; they may still sit in failed/.
OLD_RETRY_ADVICE = ("To try again, fix the problem and move the files back into the inbox.",)

# Any exception that is not a JobError: the daemon's fault, not the user's.
INTERNAL_ERROR = (
    "Something went wrong inside the video daemon while making this clip; it is not a problem with "
    "your files as far as we can tell. Move the files back into the inbox to try again, and if it "
    "fails again tell the operator (the details are in the log beside this file)."
)

# A cluster worker died under the job on every try (``{crashes}``).
WORKER_LOST_ERROR = (
    "The GPU worker making this clip stopped while making it, on each of {crashes} tries, so it was "
    "set aside to protect the other jobs. Try a smaller resolution or fewer frames, or ask the "
    "operator to look at the daemon's log."
)

# The job ran past [limits] max_job_seconds (``{seconds}``).
TOO_LONG_ERROR = (
    "This clip took longer than the {seconds:g} s allowed for one clip, so it was stopped. Try fewer "
    "frames or fewer steps, or a smaller resolution (num_frames, steps and resolution in the prompt "
    "file), or ask the operator whether a longer clip can be allowed."
)

# The job was in flight at each of the daemon's last ``{crashes}`` crashes.
CRASH_LOOP_ERROR = (
    "Making this clip stopped the video daemon {crashes} times in a row, so it was set aside to "
    "protect the other jobs. Try a smaller resolution or fewer frames, or ask the operator to look "
    "at the daemon's log."
)
