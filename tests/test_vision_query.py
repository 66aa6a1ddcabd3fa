"""Question-conditioned image tokens (VisionConfig.query_tokens): which text conditions an image's
query tokens (the text after it in its turn, within its own sequence), that they follow the question
while the grid tokens do not, that the server's chunked prefill gives Engine's own answers, and that
stage 2 asks each question of a chat with its image again."""

import dataclasses

import pytest
import torch
from PIL import Image

from opengpt4.data.chat_io import Conversation
from opengpt4.engine.generate import Engine
from opengpt4.engine.sampling import SamplingParams
from opengpt4.engine.scheduler import Scheduler
from opengpt4.model.multimodal import QUESTION_WINDOW, image_questions
from opengpt4.model.transformer import Transformer
from opengpt4.tokenizer import Tokenizer
from opengpt4.vision.align import one_question_each

IMG, END = 1, 2


def embeds_of(ids):
    """Embeddings that name their token: token i -> i * ones."""
    return torch.tensor(ids, dtype=torch.float32)[..., None].expand(*torch.tensor(ids).shape, 3)


def test_an_images_question_is_the_text_after_it_up_to_the_turn_end():
    ids = [[7, IMG, IMG, 4, 6, END, 9, 9],  # one image, then "4 6", then the answer after <|im_end|>
           [IMG, IMG, IMG, IMG, 5, END, 0, 0]]  # two images in a row: both read "5", not each other
    q = image_questions(embeds_of(ids), torch.tensor(ids), IMG, 2, END)
    assert q[:, 0].tolist() == [5.0, 5.0, 5.0]


def test_a_question_stops_at_its_sequence_and_an_image_with_none_gets_zeros():
    ids = [[IMG, IMG, 8, 3, 3, IMG, IMG, 9]]  # a flat batch: [IMG IMG 8] then another sequence's tokens
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    q = image_questions(embeds_of(ids), torch.tensor(ids), IMG, 2, END, segments)
    assert q[:, 0].tolist() == [8.0, 9.0]
    q = image_questions(embeds_of([[4, IMG, IMG]]), torch.tensor([[4, IMG, IMG]]), IMG, 2, END)
    assert q.tolist() == [[0.0, 0.0, 0.0]]  # nothing follows the image: the queries alone
    long = [IMG, IMG] + [3] * QUESTION_WINDOW + [30] * 10
    assert image_questions(embeds_of([long]), torch.tensor([long]), IMG, 2, END)[0, 0] == 3.0  # the window


@pytest.fixture(scope="module")
def query_model(tiny_model, tiny_tokenizer):
    """The tiny vision model with 2 query tokens after its 4 grid tokens, <|im_end|> as the turn end."""
    vision = dataclasses.replace(tiny_model.config.vision, query_tokens=2)
    config = dataclasses.replace(tiny_model.config, vision=vision, turn_end_id=tiny_tokenizer.im_end_id)
    torch.manual_seed(1)
    model = Transformer(config)
    model.init_weights()
    model.load_state_dict(tiny_model.state_dict(), strict=False)  # the same ViT, grid projector and decoder
    with torch.no_grad():  # attention sharp enough at init that the question moves it
        model.projector.query.question.weight.mul_(50)
        model.projector.query.kv.weight.mul_(50)
    tokenizer = Tokenizer(tiny_tokenizer.backend, **{**tiny_tokenizer.metadata(),
                                                     "tokens_per_image": vision.tokens_per_image})
    return model.eval(), tokenizer


def chat(question, color="red"):
    return [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (20, 20), color)},
                                         {"type": "text", "text": question}]}]


def test_query_tokens_follow_the_question_and_grid_tokens_do_not(query_model):
    model, tokenizer = query_model
    engine = Engine(model, tokenizer, pack=False)
    a, b = (engine.chat_prompt(chat(q)) for q in ("the cat sat", "seven blue birds"))
    with torch.no_grad():
        ea, eb = (model.embed(torch.tensor([p.ids]), p.images)[0] for p in (a, b))
    at = [i for i, t in enumerate(a.ids) if t == tokenizer.image_id]
    assert len(at) == 6 and at == [i for i, t in enumerate(b.ids) if t == tokenizer.image_id]
    assert torch.equal(ea[at[:4]], eb[at[:4]])  # the grid tokens: the image alone
    change = (ea[at[4:]] - eb[at[4:]]).abs().max() / ea[at[4:]].abs().max()
    assert change > 0.01  # the query tokens: the question too


def test_chunked_prefill_keeps_an_images_question_with_it_and_gives_engines_answers(query_model):
    """Chunks of 3 tokens would cut the question off the image it conditions: the scheduler carries the
    chunk on to the turn's end, and every request gets Engine's own greedy tokens."""
    model, tokenizer = query_model
    engine = Engine(model, tokenizer, pack=False)
    prompts = [engine.chat_prompt(chat(q, c)) for q, c in
               (("the cat sat on a mat", "red"), ("seven blue birds", "blue"), ("naïve café", "red"))]
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    solo = [engine.generate([p], greedy)[0][0].token_ids for p in prompts]
    scheduler = Scheduler(engine, max_batch=4, prefill_chunk=3)
    handles = [scheduler.submit(p, greedy) for p in prompts]
    scheduler.step()  # admits them; the first prompt's first chunk
    ids, first = prompts[0].ids, scheduler.prefilling[0]
    last_image = len(ids) - 1 - ids[::-1].index(tokenizer.image_id)
    while first.seq.length <= last_image:
        scheduler.step()
    assert first.seq.length == ids.index(tokenizer.im_end_id, last_image) + 1  # the image and its question
    while not all(h.done.is_set() for h in handles):
        scheduler.step()
    assert [[d.token_id for d in h.deltas()] for h in handles] == solo


def test_stage2_asks_each_question_of_a_chat_with_its_image_again():
    image = {"type": "image", "image": "a.png"}
    c = Conversation([{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [image, {"type": "text", "text": "Which shape is red?"}]},
                      {"role": "assistant", "content": "circle"},
                      {"role": "user", "content": "How many shapes?"},
                      {"role": "assistant", "content": "2"}], "x.json: 0")
    text_only = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                              {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}], "t")
    split = one_question_each([c, text_only])
    assert [s.messages for s in split[:2]] == [
        [c.messages[0], {"role": "user", "content": [image, {"type": "text", "text": "Which shape is red?"}]},
         {"role": "assistant", "content": "circle"}],
        [c.messages[0], {"role": "user", "content": [image, {"type": "text", "text": "How many shapes?"}]},
         {"role": "assistant", "content": "2"}]]
    assert split[2] is text_only and len(split) == 3
