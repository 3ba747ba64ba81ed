"""Write train.parquet and val.parquet of PyVision video tasks for this recipe.

    python recipes/video/prepare_data.py --synthetic 512 --out data/pyvision_video_smoke  # offline smoke set
    python recipes/video/prepare_data.py --pyvision-json FILE --out data/pyvision_video   # PyVision-RL's data
    python recipes/video/prepare_data.py --hf-dataset NAME --out data/pyvision_video      # a Hugging Face dataset

See README.md beside this file; the rows are documented in pyvision_agent/verl/data.py.
"""

from pyvision_agent.verl.data import main

if __name__ == "__main__":
    main(modality="video")
