"""The comparison demo behind app.py: `engine` (settings, one column's run, the engine that loads a family once)
and `page` (the gradio page and its `/compare` and `/reward_vs_steps` handlers). Test and bench harness (stand-in
families, local servers, browser capture): `rglcd.testing`."""

from rglcd.demo.engine import (COLUMNS, DISPLAY_SIZE, EXTRA_REWARDS, NUM_IMAGES, STUDENT_STEPS, TEACHER,
                               TEACHER_STEPS, TITLES, ColumnResult, Engine, Settings, family_columns, image_dir,
                               parse_settings, serve_from_private_folder, shown_reward_names)
from rglcd.demo.page import (EXAMPLE_PROMPTS, GENERIC_EXAMPLES, PLOT_SAMPLES, REWARD_NOTES, TRAINED, UNSEEN,
                             best_column, build_app, compare_page, example_prompts, page_outputs, random_seed,
                             reward_figure, reward_legend, reward_plot_page, user_message, zoo_members)

__all__ = [
    "COLUMNS", "DISPLAY_SIZE", "EXAMPLE_PROMPTS", "EXTRA_REWARDS", "GENERIC_EXAMPLES", "NUM_IMAGES", "PLOT_SAMPLES",
    "REWARD_NOTES", "STUDENT_STEPS", "TEACHER", "TEACHER_STEPS", "TITLES", "TRAINED", "UNSEEN", "ColumnResult",
    "Engine", "Settings", "best_column", "build_app", "compare_page", "example_prompts", "family_columns",
    "image_dir", "page_outputs", "parse_settings", "random_seed", "reward_figure", "reward_legend",
    "reward_plot_page", "serve_from_private_folder", "shown_reward_names", "user_message", "zoo_members",
]
