"""The study's notebook, as a script: a user's own model, made the way notebooks make them.

tf.keras 2.x (the `tf_keras` package): MobileNetV2 with ImageNet weights (from the local file,
copied layer by layer into the tf.keras 2.x network), backbone frozen, a softmax head;
images read by `image_dataset_from_directory` (stretched to the input size, no crop) and
scaled to [0, 1] outside the model; saved as a legacy .h5 and as a SavedModel folder. Prints
one JSON line: the accuracy the user's own `model.evaluate` reports on the held-out folder.

Run in its own process, as a notebook would be: `python study_notebook.py TRAIN HELDOUT OUT`.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(train_dir: str, heldout_dir: str, out_dir: str, size: int = 64) -> None:
    import keras
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    weights = os.environ["CELLAUDIT_WEIGHTS"]
    pretrained = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                                weights=weights)
    base = tf_keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                             weights=None)
    base.set_weights(pretrained.get_weights())
    base.trainable = False
    classes = sorted(d for d in os.listdir(train_dir) if not d.startswith("."))
    model = tf_keras.Sequential([
        base,
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(len(classes), activation="softmax"),
    ])
    model.compile(tf_keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    def load(folder: str, shuffle: bool):
        ds = tf_keras.utils.image_dataset_from_directory(
            folder, image_size=(size, size), batch_size=32, shuffle=shuffle, seed=0)
        return ds.map(lambda x, y: (x / 255.0, y))  # [0, 1], outside the model

    model.fit(load(train_dir, True), epochs=8, verbose=0)
    _, accuracy = model.evaluate(load(heldout_dir, False), verbose=0)
    model.save(os.path.join(out_dir, "study.h5"))
    model.save(os.path.join(out_dir, "study_savedmodel"))  # tf.keras 2.x: a SavedModel folder
    print(json.dumps({"accuracy": float(accuracy), "classes": classes,
                      "tf": tf.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
