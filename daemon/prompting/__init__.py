"""Prompts written from the image by a vision-language model (``[prompting]``).

``writer`` loads the model once and writes; ``styles`` holds what each video family wants to read;
``placement`` decides where the model lives beside the video model; ``tiny`` builds the
random-weight model that tests use; ``fetch`` gets a real one onto the machine.
"""
