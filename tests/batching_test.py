"""Batches: each training pass covers every example once; eval sees all."""

import jax
import numpy as np

from cifar_jax.data import batching


def test_train_order_covers_each_pass_once_with_a_partial_last_batch():
  order = batching.TrainOrder(
      num_examples=50, batch_size=16, key=jax.random.key(3)
  )
  assert order.batches_per_pass == 4
  for pass_index in range(2):
    seen = []
    for j in range(4):
      assert order.locate(pass_index * 4 + j) == (pass_index, j)
      idx, mask = order.batch(pass_index * 4 + j)
      assert idx.shape == mask.shape == (16,)
      seen.extend(idx[mask == 1])
    assert mask.sum() == 2  # 50 = 3 * 16 + 2, as Keras' last batch.
    assert sorted(seen) == list(range(50))
  first = [order.batch(j)[0] for j in range(4)]
  second = [order.batch(4 + j)[0] for j in range(4)]
  assert not np.array_equal(first[0], second[0])  # Reshuffled every pass.


def test_drop_remainder_cuts_each_pass_into_whole_batches_only():
  order = batching.TrainOrder(50, 16, jax.random.key(3), drop_remainder=True)
  assert order.batches_per_pass == 3  # airbench's drop_last: 50 // 16.
  for pass_index in range(2):
    batches = [order.batch(pass_index * 3 + j) for j in range(3)]
    assert all(mask.sum() == 16 for _, mask in batches)
    seen = np.concatenate([idx for idx, _ in batches])
    assert len(set(seen)) == 48 and seen.max() < 50  # 2 left out.
  # Each pass leaves out others: over passes, every example is seen.
  seen = {i for s in range(30) for i in order.batch(s)[0]}
  assert seen == set(range(50))


def test_train_order_is_a_function_of_key_and_step_only():
  a = batching.TrainOrder(100, 32, jax.random.key(7))
  b = batching.TrainOrder(100, 32, jax.random.key(7))
  for s in [9, 0, 5, 4, 9]:  # Any access order, e.g. after a resume.
    np.testing.assert_array_equal(a.batch(s)[0], b.batch(s)[0])
  c = batching.TrainOrder(100, 32, jax.random.key(8))
  assert not np.array_equal(a.batch(0)[0], c.batch(0)[0])


def test_eval_batches_count_every_example_exactly_once():
  seen, real = [], 0
  for idx, mask in batching.eval_batches(103, 25):
    assert idx.shape == (25,)
    seen.extend(idx[mask == 1])
    real += mask.sum()
  assert sorted(seen) == list(range(103)) and real == 103


def test_shuffled_batch_order_moves_the_partial_batch_within_each_pass():
  key = jax.random.key(3)
  plain = batching.TrainOrder(50, 16, key)
  shuffled = batching.TrainOrder(50, 16, key, shuffle_batch_order=True)
  partial_at = []
  for pass_index in range(8):
    steps = range(pass_index * 4, pass_index * 4 + 4)
    batches = [shuffled.batch(s) for s in steps]
    # The same batches as in order (the same examples' permutation),
    # visited in another order: Keras' fit_generator over a flow.
    as_plain = {tuple(plain.batch(s)[0]) for s in steps}
    assert {tuple(idx) for idx, _ in batches} == as_plain
    sizes = [int(mask.sum()) for _, mask in batches]
    assert sorted(sizes) == [2, 16, 16, 16]
    partial_at.append(sizes.index(2))
  assert len(set(partial_at)) > 1  # Not always last: anywhere in its pass.
