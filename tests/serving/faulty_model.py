"""A test model logged from code: the real classifier, made to fail or to be slow by its model_config."""

import random
import time

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from pipeline.model import TabularClassifier


class FaultyClassifier(PythonModel):
    """Wraps the real classifier; ``fail_rate`` of calls raise, each call sleeps ``delay_s``."""

    def load_context(self, context):
        self.inner = TabularClassifier()
        self.inner.load_context(context)
        self.fail_rate = float(context.model_config.get("fail_rate", 0.0))
        self.delay_s = float(context.model_config.get("delay_s", 0.0))

    def predict(self, context, model_input, params=None):
        if self.delay_s:
            time.sleep(self.delay_s)
        if random.random() < self.fail_rate:
            raise RuntimeError("injected model failure")
        return self.inner.predict(context, model_input)


set_model(FaultyClassifier())
