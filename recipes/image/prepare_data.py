"""Write train.parquet and val.parquet of PyVision image tasks for this recipe.

    python recipes/image/prepare_data.py --synthetic 512 --out data/pyvision_image_smoke  # offline smoke set
    python recipes/image/prepare_data.py --pyvision-json FILE --out data/pyvision_image   # PyVision-RL's data
    python recipes/image/prepare_data.py --hf-dataset NAME --out data/pyvision_image      # a Hugging Face dataset

See README.md beside this file; the rows are documented in pyvision_agent/verl/data.py.
"""

from pyvision_agent.verl.data import main

if __name__ == "__main__":
    main(modality="image")
