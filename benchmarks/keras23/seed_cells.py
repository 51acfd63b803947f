"""The seed notebook's model cells, as written, for Keras 2.3.1.

Each function is one cell of `shared/seed/000_5aa4ee9aafc89df0.txt`: the
same layers, compile and fit call, in the notebook's own words (Keras 1
argument names included). Only the data comes in as arguments instead of
`cifar10.load_data()`, and the fit call is returned unmade (`Cell.fit`), so
that the peer can add callbacks and `initial_epoch` to it, or train on
batches of its own with the compiled model. Python 3.7, Keras 2.3.1: this
file runs in the peer's venv (`make_venv.sh`), never under cifar_jax.
"""

import collections

from keras.models import Sequential
from keras.layers import Dense
from keras.layers import Dropout
from keras.layers import BatchNormalization
from keras.layers import Flatten
from keras.constraints import maxnorm
from keras.optimizers import SGD
from keras.layers.convolutional import Conv2D
from keras.layers.convolutional import MaxPooling2D
from keras.preprocessing.image import ImageDataGenerator

# model: the compiled model; datagen: the cell's ImageDataGenerator (None
# for `fit` on arrays); batch_size: of its fit call; fit(**extra): the
# cell's fit call, with `extra` (callbacks, initial_epoch, verbose) added.
Cell = collections.namedtuple('Cell', 'model datagen batch_size fit')


def simple(x_train, y_train, x_test, y_test):
  simpleCNN = Sequential()
  simpleCNN.add(Conv2D(32, (3, 3), input_shape=(32, 32, 3), padding='same', activation='relu', kernel_constraint=maxnorm(3)))
  simpleCNN.add(Dropout(0.2))
  simpleCNN.add(Conv2D(32, (3,3), activation='relu', padding='same', kernel_constraint=maxnorm(3)))
  simpleCNN.add(MaxPooling2D(pool_size=(2,2)))
  simpleCNN.add(Flatten())
  simpleCNN.add(Dense(512, activation='relu', kernel_constraint=maxnorm(3)))
  simpleCNN.add(Dropout(0.5))
  simpleCNN.add(Dense(y_test.shape[1], activation='softmax'))

  a = 0.01
  e = 25
  d = a / e
  tmp = SGD(lr=a, momentum=0.9, decay=d, nesterov=False)
  simpleCNN.compile(loss='categorical_crossentropy', optimizer=tmp, metrics=['accuracy'])

  fit = lambda **extra: simpleCNN.fit(x_train, y_train, validation_data=(x_test, y_test), epochs=e, batch_size=32, **extra)
  return Cell(simpleCNN, None, 32, fit)


def _large(x_train, y_train, x_test, y_test, e):
  """The large CNN's cell; the notebook ran it for 25 and for 100 epochs."""
  large = Sequential()
  large.add(Conv2D(32, (3, 3), input_shape=(32, 32, 3), activation='relu', padding='same'))
  large.add(Dropout(0.2))
  large.add(Conv2D(32, (3, 3), activation='relu', padding='same'))
  large.add(MaxPooling2D())
  large.add(Conv2D(64, (3, 3), activation='relu', padding='same'))
  large.add(Dropout(0.2))
  large.add(Conv2D(64, (3, 3), activation='relu', padding='same'))
  large.add(MaxPooling2D())
  large.add(Conv2D(128, (3, 3), activation='relu', padding='same'))
  large.add(Dropout(0.2))
  large.add(Conv2D(128, (3, 3), activation='relu', padding='same'))
  large.add(MaxPooling2D())
  large.add(Flatten())
  large.add(Dropout(0.2))
  large.add(Dense(1024, activation='relu', kernel_constraint=maxnorm(3)))
  large.add(Dropout(0.2))
  large.add(Dense(512, activation='relu', kernel_constraint=maxnorm(3)))
  large.add(Dropout(0.2))
  large.add(Dense(y_test.shape[1], activation='softmax'))

  a = 0.01
  sgd_large = SGD(lr=a, momentum=0.9, decay=a/e, nesterov=False)
  large.compile(loss='categorical_crossentropy', optimizer=sgd_large, metrics=['accuracy'])

  fit = lambda **extra: large.fit(x_train, y_train, validation_data=(x_test, y_test), epochs=e, batch_size=64, **extra)
  return Cell(large, None, 64, fit)


def large(x_train, y_train, x_test, y_test):
  return _large(x_train, y_train, x_test, y_test, e=25)


def large_100(x_train, y_train, x_test, y_test):
  return _large(x_train, y_train, x_test, y_test, e=100)


def large_less_dropout(x_train, y_train, x_test, y_test):
  updated = Sequential()
  updated.add(Conv2D(32, (3, 3), input_shape=(32, 32, 3), activation='relu', padding='same'))
  updated.add(Dropout(0.2))
  updated.add(Conv2D(32, (3, 3), activation='relu', padding='same'))
  updated.add(MaxPooling2D())
  updated.add(Conv2D(64, (3, 3), activation='relu', padding='same'))
  updated.add(Conv2D(64, (3, 3), activation='relu', padding='same'))
  updated.add(MaxPooling2D())
  updated.add(Conv2D(128, (3, 3), activation='relu', padding='same'))
  updated.add(Conv2D(128, (3, 3), activation='relu', padding='same'))
  updated.add(MaxPooling2D())
  updated.add(Flatten())
  updated.add(Dense(1024, activation='relu', kernel_constraint=maxnorm(3)))
  updated.add(Dropout(0.2))
  updated.add(Dense(512, activation='relu', kernel_constraint=maxnorm(3)))
  updated.add(Dropout(0.2))
  updated.add(Dense(y_test.shape[1], activation='softmax'))

  a = 0.01
  e = 25
  d = a / e
  sgd_updated = SGD(lr=a, momentum=0.9, decay=d, nesterov=False)
  updated.compile(loss='categorical_crossentropy', optimizer=sgd_updated, metrics=['accuracy'])
  fit = lambda **extra: updated.fit(x_train, y_train, validation_data=(x_test, y_test), epochs=e, batch_size=64, **extra)
  return Cell(updated, None, 64, fit)


def deep_adam(x_train, y_train, x_test, y_test):
  model = Sequential()
  model.add(Conv2D(48, (3, 3), input_shape=(32, 32, 3), activation='relu', padding='same'))
  model.add(Conv2D(48, (3, 3), activation='relu'))
  model.add(MaxPooling2D((2,2)))
  model.add(Conv2D(96, (3, 3), activation='relu', padding='same'))
  model.add(Conv2D(96, (3, 3), activation='relu'))
  model.add(MaxPooling2D(pool_size=(2,2)))
  model.add(Conv2D(192, (3, 3), activation='relu', padding='same'))
  model.add(Conv2D(192, (3, 3), activation='relu'))
  model.add(MaxPooling2D(pool_size=(2,2)))
  model.add(Flatten())
  model.add(Dense(512, activation='relu'))
  model.add(Dense(256, activation='relu'))
  model.add(Dense(y_test.shape[1], activation='softmax'))

  # compile and train model
  model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
  fit = lambda **extra: model.fit(x_train, y_train, validation_data=(x_test, y_test), batch_size=128, epochs=100, **extra)
  return Cell(model, None, 128, fit)


def deep_adam_aug(x_train, y_train, x_test, y_test, model):
  """Continues `model`, deep_adam's trained model: no new compile."""
  datagen = ImageDataGenerator(zoom_range=0.2,
                               horizontal_flip=True)

  # Train the model
  fit = lambda **extra: model.fit_generator(datagen.flow(x_train, y_train, batch_size = 128
  ),
                                  samples_per_epoch = x_train.shape[0], nb_epoch
  = 200,
                                  validation_data = (x_test, y_test), **extra)
  return Cell(model, datagen, 128, fit)


def deep_adam_aug_dropout(x_train, y_train, x_test, y_test):
  latest = Sequential()

  latest.add(Conv2D(48, (3, 3), input_shape=(32, 32, 3), activation='relu', padding='same'))
  latest.add(Conv2D(48, (3, 3), activation='relu'))
  latest.add(MaxPooling2D((2,2)))
  latest.add(Dropout(0.25))
  latest.add(Conv2D(96, (3, 3), activation='relu', padding='same'))
  latest.add(Conv2D(96, (3, 3), activation='relu'))
  latest.add(MaxPooling2D(pool_size=(2,2)))
  latest.add(Dropout(0.25))
  latest.add(Conv2D(192, (3, 3), activation='relu', padding='same'))
  latest.add(Conv2D(192, (3, 3), activation='relu'))
  latest.add(MaxPooling2D(pool_size=(2,2)))
  latest.add(Dropout(0.25))
  latest.add(Flatten())
  latest.add(Dense(512, activation='relu'))
  latest.add(Dropout(0.5))
  latest.add(Dense(256, activation='relu'))
  latest.add(Dropout(0.5))
  latest.add(Dense(y_test.shape[1], activation='softmax'))

  latest.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])

  datagen_2 = ImageDataGenerator(zoom_range=0.2, horizontal_flip = True)
  fit = lambda **extra: latest.fit_generator(datagen_2.flow(x_train, y_train, batch_size = 128),
                                     samples_per_epoch = x_train.shape[0], nb_epoch
  = 100,
                                     validation_data = (x_test, y_test), **extra)
  return Cell(latest, datagen_2, 128, fit)


def bn_aug_sgd(x_train, y_train, x_test, y_test):
  latest = Sequential()

  latest.add(Conv2D(32, (3, 3), input_shape=x_train.shape[1:], activation='relu',
  padding='same'))
  latest.add(BatchNormalization())
  latest.add(Conv2D(32, (3, 3), activation='relu', padding='same'))
  latest.add(BatchNormalization())
  latest.add(MaxPooling2D((2,2)))
  latest.add(Dropout(0.25))

  latest.add(Conv2D(64, (3, 3), activation='relu', padding='same'))
  latest.add(BatchNormalization())
  latest.add(Conv2D(64, (3, 3), activation='relu'))
  latest.add(BatchNormalization())
  latest.add(MaxPooling2D(pool_size=(2,2)))
  latest.add(Dropout(0.25))

  latest.add(Conv2D(128, (3, 3), activation='relu', padding='same'))
  latest.add(BatchNormalization())
  latest.add(Conv2D(128, (3, 3), activation='relu'))
  latest.add(BatchNormalization())
  latest.add(MaxPooling2D(pool_size=(2,2)))
  latest.add(Dropout(0.25))

  latest.add(Flatten())
  latest.add(Dense(512, activation='relu'))
  latest.add(Dropout(0.5))
  latest.add(Dense(256, activation='relu'))
  latest.add(Dropout(0.5))
  latest.add(Dense(y_test.shape[1], activation='softmax'))

  # Compile simple CNN
  a = 0.01
  e = 50
  tmp = SGD(lr=a, momentum=0.9, decay=a/e, nesterov=False)
  latest.compile(loss='categorical_crossentropy', optimizer=tmp, metrics=['accuracy'])

  # Perform data augmentation on batches and fit
  datagen = ImageDataGenerator(horizontal_flip=True, width_shift_range=0.1, height_shift_range=0.1)
  datagen.fit(x_train)

  fit = lambda **extra: latest.fit_generator(datagen.flow(x_train, y_train, batch_size=64),
                                  steps_per_epoch=x_train.shape[0]//64, epochs=e,
                                  validation_data=(x_test, y_test), **extra)
  return Cell(latest, datagen, 64, fit)


RUNGS = ('simple', 'large', 'large_100', 'large_less_dropout', 'deep_adam',
         'deep_adam_aug', 'deep_adam_aug_dropout', 'bn_aug_sgd')
# A rung that continues another's trained model, as the notebook did.
CONTINUES = {'deep_adam_aug': 'deep_adam'}
