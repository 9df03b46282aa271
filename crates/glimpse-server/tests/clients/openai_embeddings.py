# The official `openai` Python client, unchanged, against Glimpse's /v1/embeddings: two texts,
# then one image (a data: URI) through `extra_body={"modality": "image"}`. Prints the vectors as
# JSON for the test to compare with the transformers fixtures. The client sends
# `Authorization: Bearer <key>` and, by default, `encoding_format: "base64"`, which it decodes.
import base64, json, os, sys

from openai import OpenAI

client = OpenAI(base_url=os.environ["GLIMPSE_BASE"] + "/v1", api_key=os.environ["GLIMPSE_API_KEY"])
model = os.environ["GLIMPSE_MODEL"]

texts = client.embeddings.create(model=model, input=["a photo of a car.", "a photo of a document."])
with open(os.environ["GLIMPSE_IMAGE"], "rb") as f:
    uri = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
images = client.embeddings.create(model=model, input=[uri], extra_body={"modality": "image"})
floats = client.embeddings.create(model=model, input="a photo of a car.", encoding_format="float")

json.dump(
    {
        "texts": [list(map(float, d.embedding)) for d in texts.data],
        "text_usage": texts.usage.prompt_tokens,
        "model": texts.model,
        "images": [list(map(float, d.embedding)) for d in images.data],
        "float": list(map(float, floats.data[0].embedding)),
    },
    sys.stdout,
)
